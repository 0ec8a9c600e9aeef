"""Stored radiographs for the browser's own window/level: full-depth values and geometry.

The study page windows images in the browser (``static/viewer.js``). It receives each image
once, as unsigned 16-bit samples whose modality value is ``offset + scale * sample``
(Modality LUT applied: rescale slope and intercept, or a Modality LUT Sequence), with the
attributes it needs beside them:

* the file's VOI LUT (VOI LUT Sequence) as a table, its windows (Window Center / Width with
  their explanations and VOI LUT Function), a percentile window, and the full range;
* Photometric Interpretation (MONOCHROME1 is inverted on display);
* orientation markers for the four edges, from Image Orientation (Patient) when present,
  else Patient Orientation; the view position label;
* the pixel spacing a distance measurement may use, and how to label it
  (:func:`measurement_spacing`, after PS3.3 section 10.7.1.3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi

from workers.inference.preprocess import (
    ImageDecodeError,
    decode_first_frame,
    percentile_window,
)

#: Largest sample value sent (unsigned 16 bits).
SAMPLE_MAX = 65535
#: Opposite of each patient direction letter (PS3.3 C.7.6.1.1.1).
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}
#: Letters of the positive patient axes x, y, z (LPS).
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))
#: Window presets in Hounsfield units, offered only for HU-rescaled data.
HU_PRESETS: tuple[tuple[str, float, float], ...] = (
    ("Lung", -600.0, 1500.0), ("Mediastinum", 40.0, 400.0), ("Bone", 400.0, 1800.0))
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class Preset:
    """One named window (centre and width in modality units)."""

    name: str
    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class VoiLut:
    """The file's first VOI LUT (VOI LUT Sequence) as a table over modality values.

    A modality value ``v`` displays as ``(data[clamp(round(v) - first)] - low) /
    (high - low)``: the output range is taken from the table itself, as the drafting
    pipeline does (devices declare 16 bits and fill 12).
    """

    first: int
    data: list[int]
    low: float
    high: float


@dataclass(frozen=True)
class Orientation:
    """The patient direction at each edge of the displayed image (empty when unknown)."""

    left: str = ""
    right: str = ""
    top: str = ""
    bottom: str = ""
    source: str = "none"


@dataclass(frozen=True)
class Spacing:
    """Physical size of a pixel for distance measurement.

    Attributes
    ----------
    row_mm, column_mm
        Distance between rows (vertical) and between columns (horizontal) in mm;
        ``None`` when the image gives none (measurements are then in pixels).
    source
        The attribute(s) used.
    label
        What a measurement in mm means, shown beside the number.
    """

    row_mm: float | None
    column_mm: float | None
    source: str
    label: str


@dataclass(frozen=True)
class PixelFrame:
    """The first frame of an image as unsigned 16-bit samples, and how to read them."""

    samples: NDArray[np.uint16]
    offset: float
    scale: float
    low: float
    high: float

    @property
    def rows(self) -> int:
        return int(self.samples.shape[0])

    @property
    def columns(self) -> int:
        return int(self.samples.shape[1])

    def little_endian_bytes(self) -> bytes:
        """The samples, row by row, as little-endian unsigned 16-bit integers."""
        return np.ascontiguousarray(self.samples, dtype="<u2").tobytes()


@dataclass(frozen=True)
class ImageDescription:
    """What the browser needs besides the samples (no patient identity)."""

    rows: int
    columns: int
    offset: float
    scale: float
    low: float
    high: float
    photometric: str
    bits_stored: int
    window: Preset
    presets: list[Preset]
    orientation: Orientation
    view_position: str
    spacing: Spacing
    units: str = field(default="")
    voi_lut: VoiLut | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return asdict(self)


def modality_frame(ds: Dataset) -> PixelFrame:
    """Decode frame 0, apply the Modality LUT and pack the values into 16 bits.

    Integer values spanning at most 65536 levels are sent exactly (``scale`` 1); others
    (fractional rescale slopes, wider ranges) are quantised linearly over their range.

    Raises
    ------
    ImageDecodeError
        When the pixel data cannot be decoded (or is over a size limit).
    """
    frame = decode_first_frame(ds)
    if frame.ndim == 3:  # colour saved radiograph: grey by luma, 8 bits
        values = np.asarray(frame, dtype=np.float64)[..., :3] @ _LUMA
    else:
        try:
            values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
        except Exception as exc:  # a malformed Modality LUT Sequence
            raise ImageDecodeError("modality LUT", f"{type(exc).__name__}: {exc}") from exc
    if not np.isfinite(values).all():
        raise ImageDecodeError("modality LUT", "values are not finite")
    low, high = float(values.min()), float(values.max())
    integral = bool(np.all(values == np.rint(values)))
    if integral and high - low <= SAMPLE_MAX:
        offset, scale = low, 1.0
        samples = (values - low).astype(np.uint16)
    else:
        offset = low
        scale = (high - low) / SAMPLE_MAX if high > low else 1.0
        samples = np.rint((values - low) / scale).clip(0, SAMPLE_MAX).astype(np.uint16)
    return PixelFrame(samples, offset, scale, low, high)


def _numbers(value: Any) -> list[float]:
    if value is None:
        return []
    items = list(value) if isinstance(value, Sequence | list) and not isinstance(
        value, str) else [value]
    numbers: list[float] = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            return []
        if not math.isfinite(number):
            return []
        numbers.append(number)
    return numbers


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def voi_lut(ds: Dataset) -> VoiLut | None:
    """The first item of the VOI LUT Sequence as a table; ``None`` without a usable one."""
    sequence = ds.get("VOILUTSequence")
    if not sequence or "LUTDescriptor" not in sequence[0] or "LUTData" not in sequence[0]:
        return None
    try:
        descriptor = [int(v) for v in sequence[0].LUTDescriptor]
        count, first = descriptor[0] or 65536, descriptor[1]
        table = np.asarray(apply_voi(np.arange(first, first + count), ds, index=0))
    except Exception:  # a malformed LUT: the percentile window is shown instead
        return None
    low, high = float(table.min()), float(table.max())
    if high <= low:
        return None
    return VoiLut(first, [int(v) for v in table], low, high)


def window_presets(ds: Dataset, frame: PixelFrame) -> tuple[Preset, list[Preset]]:
    """The default window and the named windows offered.

    The default is the file's VOI LUT when it has one (function ``VOI_LUT``; its centre
    and width span the table's input range, where a drag starts from), else its first
    window, else the 0.5-99.5 percentile window of the values.

    Returns
    -------
    tuple
        ``(default, presets)``; the presets hold the VOI LUT, every window of the file, the
        percentile window, the full range and, for data in Hounsfield units, lung,
        mediastinum, bone.
    """
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    centers, widths = _numbers(ds.get("WindowCenter")), _numbers(ds.get("WindowWidth"))
    explanations = _texts(ds.get("WindowCenterWidthExplanation"))
    presets: list[Preset] = []
    for index, (center, width) in enumerate(zip(centers, widths, strict=False)):
        if width < 1 and function == "LINEAR" or width <= 0:
            continue
        name = explanations[index].strip() if index < len(explanations) else ""
        presets.append(Preset(name or f"DICOM window {index + 1}", center, width, function))
    values = frame.offset + frame.scale * frame.samples.astype(np.float64)
    low, high = percentile_window(values)
    automatic = Preset("Auto (0.5-99.5 %)", (low + high) / 2, max(high - low, 1.0))
    full = Preset("Full range", (frame.low + frame.high) / 2,
                  max(frame.high - frame.low + 1, 1.0))
    table = voi_lut(ds)
    if table is not None:
        count = len(table.data)
        presets.insert(0, Preset("DICOM VOI LUT", table.first + count / 2, float(count),
                                 "VOI_LUT"))
    default = presets[0] if presets else automatic
    offered = [*presets, automatic, full]
    if str(ds.get("RescaleType", "")).upper() == "HU" or ds.get("Modality") == "CT":
        offered += [Preset(name, c, w) for name, c, w in HU_PRESETS]
    return default, offered


def _letters(vector: Sequence[float]) -> str:
    """Patient direction letters of a direction cosine vector, strongest first."""
    parts = sorted(((abs(c), axis, c) for axis, c in enumerate(vector)), reverse=True)
    letters = ""
    for magnitude, axis, component in parts:
        if magnitude < 0.25:  # a minor component of an oblique plane
            continue
        positive, negative = _AXIS_LETTERS[axis]
        letters += positive if component > 0 else negative
    return letters


def _opposite(letters: str) -> str:
    return "".join(_OPPOSITE.get(letter, "") for letter in letters)


def orientation_markers(ds: Dataset) -> Orientation:
    """The patient direction at each edge of the image as stored (no flip).

    Image Orientation (Patient) is used when present (its row and column direction
    cosines, PS3.3 C.7.6.2.1.1); else Patient Orientation (0020,0020), whose two values
    name the direction of the rows (left to right) and of the columns (top to bottom).
    """
    cosines = _numbers(ds.get("ImageOrientationPatient"))
    if len(cosines) == 6:
        row, column = _letters(cosines[:3]), _letters(cosines[3:])
        if row and column:
            return Orientation(_opposite(row), row, _opposite(column), column,
                               "ImageOrientationPatient")
    values = _texts(ds.get("PatientOrientation"))
    if len(values) == 2:
        row, column = (v.strip().upper() for v in values)
        if row and column and all(c in _OPPOSITE for c in row + column):
            return Orientation(_opposite(row), row, _opposite(column), column,
                               "PatientOrientation")
    return Orientation()


def measurement_spacing(ds: Dataset) -> Spacing:
    """The pixel spacing for distance measurement and how to label it.

    After PS3.3 section 10.7.1.3: Pixel Spacing, when present, is in the patient (or is
    the detector's spacing when it equals Imager Pixel Spacing: "at detector"); Imager
    Pixel Spacing alone is at the detector's front plane, corrected by the Estimated
    Radiographic Magnification Factor when one is given; without either, pixels.
    """
    pixel = _numbers(ds.get("PixelSpacing"))
    imager = _numbers(ds.get("ImagerPixelSpacing"))
    pixel = pixel if len(pixel) == 2 and min(pixel) > 0 else []
    imager = imager if len(imager) == 2 and min(imager) > 0 else []
    if pixel:
        if imager and np.allclose(pixel, imager):
            return Spacing(pixel[0], pixel[1], "PixelSpacing", "mm at detector")
        calibration = str(ds.get("PixelSpacingCalibrationType", "") or "").strip()
        label = f"mm (calibrated: {calibration.lower()})" if calibration else "mm"
        return Spacing(pixel[0], pixel[1], "PixelSpacing", label)
    if imager:
        factor = _numbers(ds.get("EstimatedRadiographicMagnificationFactor"))
        if len(factor) == 1 and factor[0] > 0:
            return Spacing(imager[0] / factor[0], imager[1] / factor[0],
                           "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor",
                           "mm (magnification corrected, estimated)")
        return Spacing(imager[0], imager[1], "ImagerPixelSpacing", "mm at detector")
    return Spacing(None, None, "none", "px")


def describe(ds: Dataset, frame: PixelFrame) -> ImageDescription:
    """Everything but the samples, for the browser."""
    default, presets = window_presets(ds, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if frame.samples.ndim != 2 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        photometric = "MONOCHROME2"  # colour was reduced to grey
    return ImageDescription(
        rows=frame.rows, columns=frame.columns, offset=frame.offset, scale=frame.scale,
        low=frame.low, high=frame.high, photometric=photometric,
        bits_stored=int(ds.get("BitsStored", 8) or 8), window=default, presets=presets,
        orientation=orientation_markers(ds),
        view_position=str(ds.get("ViewPosition", "") or "").strip().upper(),
        spacing=measurement_spacing(ds),
        units=str(ds.get("RescaleType", "") or "").strip(),
        voi_lut=voi_lut(ds))


__all__ = ["HU_PRESETS", "ImageDescription", "Orientation", "PixelFrame", "Preset",
           "Spacing", "VoiLut", "describe", "measurement_spacing", "modality_frame",
           "orientation_markers", "voi_lut", "window_presets"]
