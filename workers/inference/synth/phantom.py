"""Procedural chest radiograph phantoms with known findings.

Every image is a deterministic function of its :class:`PhantomLabels` and a seed. The geometry
follows a frontal (PA) radiograph as displayed: the patient's right is on the image's left, the
heart projects mostly to the image's right, and bright means dense (MONOCHROME2).

Anatomy: body outline, two lung fields bounded by the rib cage and the diaphragm domes,
vessel markings radiating from the hila, mediastinum and spine, a heart whose width sets the
cardiothoracic ratio, rib and clavicle hints, noise. Findings drawn on top: pleural effusion
(meniscus blunting the costophrenic angle), pneumothorax (pleural line with a lucent,
vessel-free rim), consolidation, perihilar oedema, plate atelectasis and support devices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

Side = Literal["left", "right"]
EffusionSide = Literal["left", "right", "bilateral"]
Size = Literal["small", "large"]
Zone = Literal["upper", "lower"]
Device = Literal["ett", "central_line", "ng_tube", "pacemaker"]

DEVICES: tuple[Device, ...] = ("ett", "central_line", "ng_tube", "pacemaker")
NORMAL_CTR_RANGE = (0.38, 0.47)
ENLARGED_CTR_RANGE = (0.57, 0.68)
CARDIOMEGALY_CTR = 0.52
"""Cardiothoracic ratio above which the heart is called enlarged."""

Array = NDArray[np.floating[Any]]


@dataclass(frozen=True)
class Effusion:
    """A pleural effusion."""

    side: EffusionSide
    size: Size


@dataclass(frozen=True)
class Pneumothorax:
    """A pneumothorax."""

    side: Side
    size: Size


@dataclass(frozen=True)
class Consolidation:
    """An airspace opacity in one lung zone."""

    side: Side
    zone: Zone


@dataclass(frozen=True)
class PhantomLabels:
    """Ground truth of one phantom (sides are the patient's).

    Attributes
    ----------
    ctr
        Cardiothoracic ratio (heart width / thoracic width).
    effusion, pneumothorax, consolidation
        The finding, or ``None`` when absent.
    edema
        Bilateral perihilar oedema.
    atelectasis
        Side of a plate-like basal atelectasis, or ``None``.
    devices
        Support devices present, in :data:`DEVICES` order.
    ett_cm_above_carina
        Distance of the endotracheal tube tip above the carina (only with an ETT).
    """

    ctr: float
    effusion: Effusion | None = None
    pneumothorax: Pneumothorax | None = None
    consolidation: Consolidation | None = None
    edema: bool = False
    atelectasis: Side | None = None
    devices: tuple[Device, ...] = ()
    ett_cm_above_carina: int | None = None

    @property
    def cardiomegaly(self) -> bool:
        """Whether the heart is enlarged (``ctr`` above :data:`CARDIOMEGALY_CTR`)."""
        return self.ctr > CARDIOMEGALY_CTR

    @property
    def is_normal(self) -> bool:
        """No finding other than (possibly) support devices."""
        return not (
            self.cardiomegaly
            or self.effusion
            or self.pneumothorax
            or self.consolidation
            or self.edema
            or self.atelectasis
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with derived flags."""
        data = asdict(self)
        data["devices"] = list(self.devices)
        data["cardiomegaly"] = self.cardiomegaly
        data["normal"] = self.is_normal
        return data


@dataclass(frozen=True)
class Phantom:
    """A rendered phantom.

    Attributes
    ----------
    pixels
        ``uint16`` image with 12 significant bits (MONOCHROME2: dense is bright), or ``uint8``
        when requested.
    labels
        The findings drawn.
    seed
        Seed of the rendering.
    bits
        Significant bits in ``pixels``.
    measured_ctr
        Cardiothoracic ratio as drawn (heart width over inner thoracic width, in pixels).
    """

    pixels: NDArray[np.uint16] | NDArray[np.uint8]
    labels: PhantomLabels
    seed: int
    bits: int
    measured_ctr: float = field(default=0.0)


def sample_labels(rng: np.random.Generator, *, normal_fraction: float = 0.2) -> PhantomLabels:
    """Draw a random, plausible combination of findings.

    Parameters
    ----------
    rng
        Random generator.
    normal_fraction
        Probability of a study with no finding at all (devices may still be present).

    Returns
    -------
    PhantomLabels
    """
    devices = tuple(
        d for d, p in zip(DEVICES, (0.18, 0.18, 0.15, 0.12), strict=True) if rng.random() < p
    )
    ett_cm = int(rng.integers(3, 7)) if "ett" in devices else None
    if rng.random() < normal_fraction:
        return PhantomLabels(
            ctr=float(rng.uniform(*NORMAL_CTR_RANGE)), devices=devices, ett_cm_above_carina=ett_cm
        )
    enlarged = rng.random() < 0.35
    ctr = float(rng.uniform(*(ENLARGED_CTR_RANGE if enlarged else NORMAL_CTR_RANGE)))
    effusion = None
    if rng.random() < 0.3:
        side: EffusionSide = ("left", "right", "bilateral")[int(rng.integers(0, 3))]
        effusion = Effusion(side=side, size=("small", "large")[int(rng.integers(0, 2))])
    pneumothorax = None
    if rng.random() < 0.2:
        pneumothorax = Pneumothorax(
            side=("left", "right")[int(rng.integers(0, 2))],
            size=("small", "large")[int(rng.integers(0, 2))],
        )
    consolidation = None
    if rng.random() < 0.25:
        consolidation = Consolidation(
            side=("left", "right")[int(rng.integers(0, 2))],
            zone=("upper", "lower")[int(rng.integers(0, 2))],
        )
    edema = bool(rng.random() < (0.35 if enlarged else 0.12))
    atelectasis: Side | None = None
    if rng.random() < 0.18:
        atelectasis = ("left", "right")[int(rng.integers(0, 2))]
    return PhantomLabels(
        ctr=ctr,
        effusion=effusion,
        pneumothorax=pneumothorax,
        consolidation=consolidation,
        edema=edema,
        atelectasis=atelectasis,
        devices=devices,
        ett_cm_above_carina=ett_cm,
    )


# --------------------------------------------------------------------------------------------
# Rendering primitives (coordinates: u across, v down, both in [0, 1])
# --------------------------------------------------------------------------------------------


def _segment_distance(u: Array, v: Array, a: tuple[float, float], b: tuple[float, float]) -> Array:
    au, av = a
    du, dv = b[0] - au, b[1] - av
    length2 = du * du + dv * dv
    if length2 == 0:
        return np.sqrt((u - au) ** 2 + (v - av) ** 2)
    t = np.clip(((u - au) * du + (v - av) * dv) / length2, 0.0, 1.0)
    return np.sqrt((u - au - t * du) ** 2 + (v - av - t * dv) ** 2)


def _polyline_mask(
    u: Array, v: Array, points: list[tuple[float, float]], half_width: float, pixel: float
) -> Array:
    """Anti-aliased mask of a polyline of the given half width (computed in its bounding box)."""
    mask = np.zeros(u.shape, dtype=np.float32)
    size_v, size_u = u.shape
    reach = half_width + pixel
    for a, b in zip(points[:-1], points[1:], strict=True):
        u0 = max(int((min(a[0], b[0]) - reach) / pixel) - 1, 0)
        u1 = min(int((max(a[0], b[0]) + reach) / pixel) + 2, size_u)
        v0 = max(int((min(a[1], b[1]) - reach) / pixel) - 1, 0)
        v1 = min(int((max(a[1], b[1]) + reach) / pixel) + 2, size_v)
        if u0 >= u1 or v0 >= v1:
            continue
        distance = _segment_distance(u[v0:v1, u0:u1], v[v0:v1, u0:u1], a, b)
        piece = np.clip((half_width + pixel - distance) / pixel, 0.0, 1.0)
        np.maximum(mask[v0:v1, u0:u1], piece, out=mask[v0:v1, u0:u1])
    return mask


def _smoothstep(edge0: float, edge1: float, x: Array) -> Array:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return np.asarray(t * t * (3.0 - 2.0 * t), dtype=np.float32)


@dataclass(frozen=True)
class _Anatomy:
    cx: float
    half_width: float
    apex: float
    base: float
    dome_depth: float
    right_raise: float
    heart_cx: float
    heart_half_width: float
    heart_cy: float
    heart_half_height: float
    medial: float


def _sample_anatomy(labels: PhantomLabels, rng: np.random.Generator) -> _Anatomy:
    cx = 0.5 + float(rng.uniform(-0.02, 0.02))
    half_width = float(rng.uniform(0.33, 0.37))
    apex = float(rng.uniform(0.1, 0.14))
    base = float(rng.uniform(0.78, 0.82))
    heart_half_width = labels.ctr * half_width
    # The heart straddles the midline, about two thirds of it to the patient's left.
    heart_cx = cx + 0.3 * heart_half_width
    return _Anatomy(
        cx=cx,
        half_width=half_width,
        apex=apex,
        base=base,
        dome_depth=float(rng.uniform(0.08, 0.11)),
        right_raise=float(rng.uniform(0.0, 0.025)),
        heart_cx=heart_cx,
        heart_half_width=heart_half_width,
        heart_cy=base - 0.16,
        heart_half_height=float(rng.uniform(0.12, 0.14)),
        medial=0.055,
    )


def _side_sign(side: Side) -> float:
    """Image-horizontal direction of a patient side: right is image-left (-1)."""
    return -1.0 if side == "right" else 1.0


def _dome(u: Array, a: _Anatomy, side: Side) -> Array:
    sign = _side_sign(side)
    centre = a.cx + sign * a.half_width / 2.0
    x = (u - centre) / (a.half_width / 2.0)
    base = a.base - (a.right_raise if side == "right" else 0.0)
    return (base - a.dome_depth * np.clip(1.0 - x * x, 0.0, 1.0)).astype(np.float32)


def render_density(labels: PhantomLabels, size: int, seed: int) -> tuple[Array, float]:
    """Render tissue density in ``[0, 1]`` (0 air, 1 metal) for one phantom.

    Parameters
    ----------
    labels
        Findings to draw.
    size
        Output is ``size`` x ``size`` pixels.
    seed
        Seed of every random detail (anatomy jitter, vessels, noise).

    Returns
    -------
    tuple
        ``(density, measured_ctr)``.
    """
    rng = np.random.default_rng(seed)
    a = _sample_anatomy(labels, rng)
    pixel = 1.0 / size
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    v, u = np.meshgrid(grid, grid, indexing="ij")

    image = np.full((size, size), 0.03, dtype=np.float32)
    body = ((u - a.cx) / (a.half_width + 0.1)) ** 2 + ((v - 0.62) / 0.62) ** 2 <= 1.0
    image[body] = 0.48
    shoulders = (v < 0.16) & (np.abs(u - a.cx) < a.half_width + 0.12) & (v > 0.04)
    image[shoulders] = 0.5

    # Lung cage: ellipse centred at the bases, apex rounded, cut by the domes and mediastinum.
    ry = a.base - a.apex
    cage_r = np.sqrt(((u - a.cx) / a.half_width) ** 2 + ((v - a.base) / ry) ** 2)
    right_half = u < a.cx
    dome = np.where(right_half, _dome(u, a, "right"), _dome(u, a, "left"))
    cage = (cage_r <= 1.0) & (v < dome) & (v > a.apex - 0.02)
    mediastinal = np.abs(u - a.cx) < a.medial + 0.02 * np.clip((v - 0.3) / 0.4, 0, 1)
    heart = ((u - a.heart_cx) / a.heart_half_width) ** 2 + (
        (v - a.heart_cy) / a.heart_half_height
    ) ** 2 <= 1.0
    lungs = cage & ~mediastinal & ~heart
    lung_texture = 0.19 + 0.03 * (v - a.apex) / ry + rng.normal(0, 0.006, size=(size, size))
    image[lungs] = lung_texture[lungs].astype(np.float32)

    # Pneumothorax: a rim of the hemithorax with no lung in it, bounded by the pleural line.
    ptx_rim = np.zeros_like(lungs)
    pleural_line = np.zeros((size, size), dtype=np.float32)
    if labels.pneumothorax is not None:
        gap = 0.14 if labels.pneumothorax.size == "small" else 0.3
        sign = _side_sign(labels.pneumothorax.side)
        on_side = (u - a.cx) * sign > 0
        inner = 1.0 - gap
        ptx_rim = lungs & on_side & (cage_r > inner) & (v < dome - 0.015)
        pleural_line = (
            np.clip(1.0 - np.abs(cage_r - inner) / (1.2 * pixel / 0.3), 0.0, 1.0)
            * (lungs & on_side & (v < dome - 0.02))
        ).astype(np.float32)

    # Vessel markings from each hilum; none inside a pneumothorax rim.
    vessels = np.zeros((size, size), dtype=np.float32)
    sides: tuple[Side, Side] = ("right", "left")
    for side in sides:
        sign = _side_sign(side)
        hilum = (a.cx + sign * 0.1, a.apex + 0.42 * ry)
        tree = np.zeros((size, size), dtype=np.float32)
        for _ in range(14):
            angle = float(rng.uniform(-1.25, 1.25))
            length = float(rng.uniform(0.12, 0.3))
            end = (
                hilum[0] + sign * math.cos(angle) * length,
                hilum[1] - math.sin(angle) * length * 0.9,
            )
            width = float(rng.uniform(0.002, 0.005))
            np.maximum(tree, _polyline_mask(u, v, [hilum, end], width, pixel), out=tree)
        fade = np.clip(1.0 - np.hypot(u - hilum[0], v - hilum[1]) / 0.33, 0.0, 1.0)
        np.maximum(vessels, 0.12 * tree * fade, out=vessels)
    vessels *= lungs & ~ptx_rim
    image += vessels
    if labels.pneumothorax is not None:
        image[ptx_rim] = 0.035
        image = np.maximum(image, 0.5 * pleural_line)

    # Mediastinum, spine, heart, subdiaphragmatic soft tissue.
    image[mediastinal & (v > a.apex - 0.1) & (v < dome + 0.05)] = 0.62
    spine = np.abs(u - a.cx) < 0.035
    image[spine & body] = np.maximum(image[spine & body], 0.66)
    trachea = (np.abs(u - a.cx) < 0.012) & (v < a.apex + 0.2) & (v > 0.0)
    image[trachea] = 0.32
    image[heart] = 0.66
    below = (v >= dome) & body
    image[below] = 0.6

    # Rib arcs and clavicles over the thorax.
    ribs = np.zeros((size, size), dtype=np.float32)
    for i in range(9):
        level = a.apex + 0.02 + i * ry / 9.5
        curve = level + 0.06 * ((u - a.cx) / a.half_width) ** 2
        ribs = np.maximum(ribs, np.clip(1.0 - np.abs(v - curve) / 0.012, 0, 1))
    image += 0.05 * ribs * (cage_r <= 1.05)
    for sign in (-1.0, 1.0):
        clavicle = [(a.cx + sign * 0.05, a.apex + 0.04), (a.cx + sign * 0.27, a.apex - 0.02)]
        image = np.maximum(image, 0.6 * _polyline_mask(u, v, clavicle, 0.012, pixel))

    _draw_findings(image, labels, a, u, v, lungs, cage, dome, pixel, rng)
    _draw_devices(image, labels, a, u, v, pixel)

    image += rng.normal(0.0, float(rng.uniform(0.006, 0.014)), size=(size, size)).astype(np.float32)
    measured = _measure_ctr(heart, cage)
    return np.clip(image, 0.0, 1.0).astype(np.float32), measured


def _draw_findings(
    image: Array,
    labels: PhantomLabels,
    a: _Anatomy,
    u: Array,
    v: Array,
    lungs: NDArray[np.bool_],
    cage: NDArray[np.bool_],
    dome: Array,
    pixel: float,
    rng: np.random.Generator,
) -> None:
    ry = a.base - a.apex
    if labels.edema:
        haze = np.zeros_like(image)
        for sign in (-1.0, 1.0):
            hx, hy = a.cx + sign * 0.12, a.apex + 0.45 * ry
            haze += np.exp(-(((u - hx) / 0.13) ** 2 + ((v - hy) / 0.17) ** 2))
        streaks = np.clip(rng.normal(0.0, 1.0, size=image.shape), -2, 2) * 0.02
        image += (0.2 * np.clip(haze, 0, 1) + streaks * haze) * lungs

    if labels.consolidation is not None:
        sign = _side_sign(labels.consolidation.side)
        cu = a.cx + sign * float(rng.uniform(0.2, 0.24))
        cv = a.apex + ry * (0.32 if labels.consolidation.zone == "upper" else 0.68)
        blob = np.zeros_like(image)
        for _ in range(4):
            bu = cu + float(rng.normal(0, 0.03))
            bv = cv + float(rng.normal(0, 0.03))
            radius = float(rng.uniform(0.065, 0.095))
            blob = np.maximum(blob, np.exp(-(((u - bu) ** 2 + (v - bv) ** 2) / radius**2)))
        opacity = _smoothstep(0.25, 0.6, blob) * lungs
        image += 0.34 * opacity

    if labels.atelectasis is not None:
        sign = _side_sign(labels.atelectasis)
        centre_u = a.cx + sign * 0.2
        centre_v = a.base - 0.19
        tilt = float(rng.uniform(-0.04, 0.04))
        band = [(centre_u - 0.11, centre_v - tilt), (centre_u + 0.11, centre_v + tilt)]
        mask = _polyline_mask(u, v, band, 0.012, pixel) * lungs
        image += 0.3 * mask

    if labels.effusion is not None:
        sides: tuple[Side, ...] = (
            ("right", "left") if labels.effusion.side == "bilateral" else (labels.effusion.side,)
        )
        height = 0.12 if labels.effusion.size == "small" else 0.28
        for side in sides:
            sign = _side_sign(side)
            on_side = (u - a.cx) * sign > 0
            lateral = np.clip(np.abs(u - a.cx) / a.half_width, 0.0, 1.0)
            # Meniscus: higher against the chest wall than medially.
            surface = (a.base - height) + 0.09 * (1.0 - lateral) ** 1.5
            within = on_side & (np.abs(u - a.cx) < a.half_width) & (cage | (v >= dome))
            fluid = _smoothstep(-0.008, 0.008, v - surface) * within
            target = 0.58
            image[:] = image * (1.0 - fluid) + target * fluid


def _draw_devices(
    image: Array, labels: PhantomLabels, a: _Anatomy, u: Array, v: Array, pixel: float
) -> None:
    metal = 0.95
    carina_v = a.apex + 0.22
    if "ett" in labels.devices:
        cm = labels.ett_cm_above_carina or 4
        tip = carina_v - 0.018 * cm
        for offset in (-0.008, 0.008):
            line = [(a.cx + offset, 0.0), (a.cx + offset, tip)]
            np.maximum(image, metal * _polyline_mask(u, v, line, 0.0025, pixel), out=image)
    if "central_line" in labels.devices:
        path = [
            (a.cx - 0.2, 0.0),
            (a.cx - 0.12, a.apex + 0.02),
            (a.cx - 0.05, a.apex + 0.14),
            (a.cx - 0.035, a.apex + 0.26),
        ]
        np.maximum(image, metal * _polyline_mask(u, v, path, 0.003, pixel), out=image)
    if "ng_tube" in labels.devices:
        path = [
            (a.cx + 0.004, 0.0),
            (a.cx + 0.01, a.base - 0.2),
            (a.cx + 0.06, a.base + 0.02),
            (a.cx + 0.17, a.base + 0.09),
            (a.cx + 0.2, a.base + 0.06),
        ]
        np.maximum(image, metal * _polyline_mask(u, v, path, 0.003, pixel), out=image)
    if "pacemaker" in labels.devices:
        gu, gv = a.cx + 0.26, a.apex + 0.07
        generator = (np.abs(u - gu) < 0.045) & (np.abs(v - gv) < 0.03)
        image[generator] = 1.0
        for end in ((a.heart_cx - 0.02, a.heart_cy - 0.02), (a.heart_cx + 0.02, a.heart_cy + 0.06)):
            lead = [(gu - 0.03, gv + 0.01), (a.cx + 0.06, a.apex + 0.12), (a.cx, a.apex + 0.3), end]
            np.maximum(image, metal * _polyline_mask(u, v, lead, 0.0025, pixel), out=image)


def _measure_ctr(heart: NDArray[np.bool_], cage: NDArray[np.bool_]) -> float:
    heart_cols = np.flatnonzero(heart.any(axis=0))
    cage_cols = np.flatnonzero(cage.any(axis=0))
    if heart_cols.size == 0 or cage_cols.size == 0:
        return 0.0
    return float((heart_cols[-1] - heart_cols[0] + 1) / (cage_cols[-1] - cage_cols[0] + 1))


def render_phantom(
    labels: PhantomLabels, *, size: int = 256, seed: int = 0, bits: int = 12
) -> Phantom:
    """Render a phantom as stored pixel values.

    Parameters
    ----------
    labels
        Findings to draw.
    size
        Image side in pixels.
    seed
        Seed of the random details; the same ``(labels, size, seed)`` gives the same pixels.
    bits
        ``8`` for ``uint8`` output, ``9..16`` for ``uint16`` with that many significant bits.

    Returns
    -------
    Phantom
    """
    density, measured = render_density(labels, size, seed)
    top = 2**bits - 1
    scaled = np.rint(density.astype(np.float64) * top)
    pixels: NDArray[np.uint16] | NDArray[np.uint8] = (
        scaled.astype(np.uint8) if bits <= 8 else scaled.astype(np.uint16)
    )
    return Phantom(pixels=pixels, labels=labels, seed=seed, bits=bits, measured_ctr=measured)


def random_phantom(seed: int, *, size: int = 256, bits: int = 12) -> Phantom:
    """Sample labels and render them, both from ``seed``."""
    rng = np.random.default_rng([seed, 0x5EED])
    labels = sample_labels(rng)
    return render_phantom(labels, size=size, seed=seed, bits=bits)


__all__ = [
    "CARDIOMEGALY_CTR",
    "Consolidation",
    "DEVICES",
    "Device",
    "Effusion",
    "ENLARGED_CTR_RANGE",
    "NORMAL_CTR_RANGE",
    "Phantom",
    "PhantomLabels",
    "Pneumothorax",
    "random_phantom",
    "render_density",
    "render_phantom",
    "sample_labels",
]
