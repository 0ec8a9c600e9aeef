"""Training and evaluation samples for the synthetic model: phantom -> 8-bit -> model pixels.

Samples follow the path a DICOM image takes in the node (stored values -> VOI window -> 8-bit
-> short-side resize and crop -> normalisation), using the same functions as
:mod:`workers.inference.preprocess`, so the model sees at training time what it will see when
drafting from files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from workers.inference.manifest import PreprocessSpec
from workers.inference.preprocess import (
    PIL_RESAMPLE,
    center_crop,
    percentile_window,
    resize_short_side,
    unit_to_uint8,
)
from workers.inference.synth.phantom import PhantomLabels, random_phantom

# Multi-label targets of the auxiliary image head, in this order.
AUX_TARGETS: tuple[str, ...] = (
    "cardiomegaly",
    "effusion_right",
    "effusion_left",
    "effusion_large",
    "pneumothorax_right",
    "pneumothorax_left",
    "pneumothorax_large",
    "consolidation_right",
    "consolidation_left",
    "consolidation_upper",
    "edema",
    "atelectasis_right",
    "atelectasis_left",
    "ett",
    "central_line",
    "ng_tube",
    "pacemaker",
)


def aux_target_vector(labels: PhantomLabels) -> NDArray[np.float32]:
    """0/1 vector of :data:`AUX_TARGETS` for one phantom."""
    eff, ptx, cons = labels.effusion, labels.pneumothorax, labels.consolidation
    flags = {
        "cardiomegaly": labels.cardiomegaly,
        "effusion_right": eff is not None and eff.side in ("right", "bilateral"),
        "effusion_left": eff is not None and eff.side in ("left", "bilateral"),
        "effusion_large": eff is not None and eff.size == "large",
        "pneumothorax_right": ptx is not None and ptx.side == "right",
        "pneumothorax_left": ptx is not None and ptx.side == "left",
        "pneumothorax_large": ptx is not None and ptx.size == "large",
        "consolidation_right": cons is not None and cons.side == "right",
        "consolidation_left": cons is not None and cons.side == "left",
        "consolidation_upper": cons is not None and cons.zone == "upper",
        "edema": labels.edema,
        "atelectasis_right": labels.atelectasis == "right",
        "atelectasis_left": labels.atelectasis == "left",
        "ett": "ett" in labels.devices,
        "central_line": "central_line" in labels.devices,
        "ng_tube": "ng_tube" in labels.devices,
        "pacemaker": "pacemaker" in labels.devices,
    }
    return np.array([float(flags[name]) for name in AUX_TARGETS], dtype=np.float32)


def stored_to_display(
    pixels: NDArray[np.uint16] | NDArray[np.uint8], bits: int, mode: str = "percentile"
) -> NDArray[np.uint8]:
    """Render stored phantom values to 8 bits the way the node renders a DICOM file.

    Parameters
    ----------
    pixels
        Stored values (MONOCHROME2).
    bits
        Significant bits of ``pixels``.
    mode
        ``"percentile"`` (a file without VOI attributes) or ``"full"`` (a file whose window
        spans the whole stored range).
    """
    values = np.asarray(pixels, dtype=np.float64)
    if mode == "full":
        top = float(2**bits - 1)
        return unit_to_uint8(np.clip(values / top, 0.0, 1.0))
    low, high = percentile_window(values)
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return unit_to_uint8(np.clip((values - low) / (high - low), 0.0, 1.0))


def resize_for_model(image8: NDArray[np.uint8], spec: PreprocessSpec) -> NDArray[np.uint8]:
    """The geometric part of :func:`~workers.inference.preprocess.to_model_input` (uint8)."""
    picture = Image.fromarray(np.asarray(image8, dtype=np.uint8), mode="L")
    picture = resize_short_side(picture, spec.size, PIL_RESAMPLE[spec.resample])
    return np.asarray(center_crop(picture, spec.size), dtype=np.uint8)


def normalise_batch(grey: NDArray[np.uint8], spec: PreprocessSpec) -> NDArray[np.float32]:
    """The intensity part of ``to_model_input`` for a batch ``(B, S, S)`` -> ``(B, C, S, S)``."""
    unit = grey.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    if mean.size == 1:
        mean = np.repeat(mean, spec.channels)
    if std.size == 1:
        std = np.repeat(std, spec.channels)
    stacked = np.broadcast_to(unit[:, None], (unit.shape[0], spec.channels, *unit.shape[1:]))
    out = (stacked - mean[None, :, None, None]) / std[None, :, None, None]
    return np.ascontiguousarray(out, dtype=np.float32)


@dataclass
class SampleSet:
    """Pre-rendered samples: model-size 8-bit images with their labels."""

    images: NDArray[np.uint8]
    labels: list[PhantomLabels]
    seeds: list[int]

    def __len__(self) -> int:
        return len(self.labels)


def render_samples(
    seeds: list[int],
    spec: PreprocessSpec,
    *,
    large_size: int = 256,
    large_fraction: float = 0.2,
    choice_seed: int = 0,
) -> SampleSet:
    """Render phantoms and bring them to model size.

    Most phantoms are drawn directly at the model's input size (cheap); a fraction is drawn at
    ``large_size`` and downsampled with the model's filter, like real acquisitions, and a
    fraction uses a full-range window instead of the percentile window.

    Parameters
    ----------
    seeds
        One phantom per seed (labels and rendering both follow the seed).
    spec
        The model's preprocessing.
    large_size, large_fraction
        Size and share of phantoms rendered larger than the model input.
    choice_seed
        Seed of the size / window choices.
    """
    rng = np.random.default_rng([choice_seed, 0xDA7A])
    images = np.empty((len(seeds), spec.size, spec.size), dtype=np.uint8)
    labels: list[PhantomLabels] = []
    for index, seed in enumerate(seeds):
        size = large_size if rng.random() < large_fraction else spec.size
        mode = "full" if rng.random() < 0.5 else "percentile"
        phantom = random_phantom(seed, size=size)
        display = stored_to_display(phantom.pixels, phantom.bits, mode)
        images[index] = resize_for_model(display, spec)
        labels.append(phantom.labels)
    return SampleSet(images=images, labels=labels, seeds=list(seeds))


__all__ = [
    "AUX_TARGETS",
    "SampleSet",
    "aux_target_vector",
    "normalise_batch",
    "render_samples",
    "resize_for_model",
    "stored_to_display",
]
