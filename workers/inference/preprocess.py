"""DICOM pixel data to display image to model input.

Two steps, kept apart so that each can be checked on its own:

1. :func:`load_display_image` decodes the first frame of any transfer syntax the node accepts
   and renders it the way a reading-room viewer would: Modality LUT (rescale or LUT sequence),
   VOI LUT (LUT sequence or window, honouring *VOI LUT Function*; a robust percentile window when
   the file carries none), MONOCHROME1 inversion, reduction to 8 bits, colour to grey.
2. :func:`to_model_input` turns that 8-bit image into the tensor layout one encoder expects
   (short-side resize, centre crop, scaling, channel replication, per-channel normalisation),
   driven entirely by a :class:`~workers.inference.manifest.PreprocessSpec`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from workers.inference.dicom_limits import LimitExceeded, check_encoded, check_pixels
from workers.inference.manifest import PreprocessSpec

logger = logging.getLogger(__name__)

DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""Lower and upper percentile of the fallback window used when a file carries no VOI."""

# ITU-R BT.601 luma weights, the usual RGB -> grey conversion for radiographs saved in colour.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)

PIL_RESAMPLE: dict[str, Image.Resampling] = {
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
}

VoiSource = Literal["voi_lut_sequence", "window", "percentile", "none"]
WindowFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]


class ImageDecodeError(ValueError):
    """Pixel data that cannot be turned into an image; retrying will not help."""

    def __init__(self, transfer_syntax: str, reason: str) -> None:
        self.transfer_syntax = transfer_syntax
        self.reason = reason
        super().__init__(f"pixel data could not be decoded: {transfer_syntax}: {reason}")


@dataclass(frozen=True)
class DisplayImage:
    """An 8-bit grey image ready for display or model preprocessing, with its provenance.

    Attributes
    ----------
    pixels
        ``uint8`` array of shape ``(rows, columns)``; 0 is black, 255 white.
    transfer_syntax_uid, transfer_syntax_name
        Encoding of the source pixel data.
    photometric_interpretation
        As stored in the file (before any conversion).
    number_of_frames
        Frames in the source; only the first is used.
    bits_stored
        Bits Stored of the source.
    modality_lut
        ``"rescale"``, ``"lut_sequence"`` or ``"none"``.
    rescale_slope, rescale_intercept
        The rescale applied (``1`` and ``0`` when none).
    voi_source
        Where the grey-level mapping came from.
    window_center, window_width
        The window actually applied, in modality units (percentile windows are expressed the
        same way); ``None`` for a VOI LUT sequence.
    window_function
        VOI LUT Function used with the window.
    inverted
        Whether grey levels were inverted (MONOCHROME1, or an INVERSE presentation shape).
    colour_converted
        Whether a colour image was reduced to grey.
    sop_instance_uid
        SOP Instance UID of the source, when present.
    steps
        Human-readable list of what was applied, in order.
    """

    pixels: NDArray[np.uint8]
    transfer_syntax_uid: str
    transfer_syntax_name: str
    photometric_interpretation: str
    number_of_frames: int
    bits_stored: int
    modality_lut: Literal["rescale", "lut_sequence", "none"]
    rescale_slope: float
    rescale_intercept: float
    voi_source: VoiSource
    window_center: float | None
    window_width: float | None
    window_function: WindowFunction | None
    inverted: bool
    colour_converted: bool
    sop_instance_uid: str | None
    steps: tuple[str, ...] = field(default_factory=tuple)

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the image."""
        rows, cols = self.pixels.shape
        return int(rows), int(cols)

    def describe(self) -> dict[str, Any]:
        """Return the provenance as a JSON-serialisable dictionary (no pixel values)."""
        return {
            "transfer_syntax_uid": self.transfer_syntax_uid,
            "transfer_syntax_name": self.transfer_syntax_name,
            "photometric_interpretation": self.photometric_interpretation,
            "number_of_frames": self.number_of_frames,
            "bits_stored": self.bits_stored,
            "modality_lut": self.modality_lut,
            "rescale_slope": self.rescale_slope,
            "rescale_intercept": self.rescale_intercept,
            "voi_source": self.voi_source,
            "window_center": self.window_center,
            "window_width": self.window_width,
            "window_function": self.window_function,
            "inverted": self.inverted,
            "colour_converted": self.colour_converted,
            "rows": self.shape[0],
            "columns": self.shape[1],
            "steps": list(self.steps),
        }


# --------------------------------------------------------------------------------------------
# Window arithmetic (PS3.3 C.11.2.1.2 and C.11.2.1.3), output scaled to [0, 1]
# --------------------------------------------------------------------------------------------


def window_to_unit(
    values: NDArray[Any],
    center: float,
    width: float,
    function: WindowFunction = "LINEAR",
) -> NDArray[np.float64]:
    """Map modality values through a VOI window onto ``[0, 1]``.

    Parameters
    ----------
    values
        Modality-LUT output values.
    center, width
        Window Center and Window Width in the same units.
    function
        VOI LUT Function: ``LINEAR`` (the DICOM default, with its half-unit offsets),
        ``LINEAR_EXACT`` or ``SIGMOID``.

    Returns
    -------
    numpy.ndarray
        ``float64`` array in ``[0, 1]``.

    Raises
    ------
    ValueError
        If the width is not allowed for the function (``< 1`` for LINEAR, ``<= 0`` otherwise).
    """
    x = np.asarray(values, dtype=np.float64)
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"window width {width} < 1 is not valid for LINEAR")
        c = center - 0.5
        w = width - 1.0
        out = np.empty_like(x)
        below = x <= c - w / 2.0
        above = x > c + w / 2.0
        between = ~(below | above)
        out[below] = 0.0
        out[above] = 1.0
        if w > 0:
            out[between] = (x[between] - c) / w + 0.5
        return np.clip(out, 0.0, 1.0)
    if width <= 0:
        raise ValueError(f"window width {width} <= 0 is not valid for {function}")
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    raise ValueError(f"unsupported VOI LUT Function {function!r}")


def percentile_window(
    values: NDArray[Any],
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    mask: NDArray[np.bool_] | None = None,
) -> tuple[float, float]:
    """Return ``(low, high)`` modality values bounding a robust display range.

    Parameters
    ----------
    values
        Modality-LUT output values.
    percentiles
        Lower and upper percentile (0-100).
    mask
        Optional boolean mask of the pixels to consider (e.g. excluding padding).

    Returns
    -------
    tuple of float
        ``low <= high``; equal only when the selected pixels are constant.
    """
    data = np.asarray(values, dtype=np.float64)
    if mask is not None and mask.any():
        data = data[mask]
    flat = data.ravel()
    if flat.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(flat, percentiles)
    if high <= low:
        low, high = float(flat.min()), float(flat.max())
    return float(low), float(high)


def unit_to_uint8(values: NDArray[np.float64]) -> NDArray[np.uint8]:
    """Quantise a ``[0, 1]`` array to ``uint8`` with rounding."""
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    tsuid = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsuid is None:
        # Datasets built in memory without meta: infer from the encoding they were read with.
        little, implicit = getattr(ds, "original_encoding", (True, True))
        if implicit in (None, True):
            return pydicom.uid.ImplicitVRLittleEndian
        return pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
    return UID(str(tsuid))


def _syntax_name(tsuid: UID) -> str:
    name = tsuid.name
    return name if name and name != str(tsuid) else f"transfer syntax {tsuid}"


def read_dataset(source: str | Path | Dataset) -> Dataset:
    """Read a DICOM file (or pass a dataset through) for :func:`load_display_image`.

    Raises
    ------
    ImageDecodeError
        If the file is not DICOM or cannot be parsed.
    """
    if isinstance(source, Dataset):
        return source
    try:
        check_encoded(Path(source))
    except LimitExceeded as exc:
        raise ImageDecodeError("over a size limit", str(exc)) from exc
    try:
        return pydicom.dcmread(Path(source))
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ImageDecodeError(
            "unknown transfer syntax", f"file could not be parsed: {exc}"
        ) from exc


def decode_first_frame(ds: Dataset) -> NDArray[Any]:
    """Decode frame 0 of a dataset's pixel data.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns)`` for monochrome data, ``(rows, columns, 3)`` for colour (YCbCr is
        converted to RGB by the decoder).

    Raises
    ------
    ImageDecodeError
        When there is no pixel data, no decoder for the syntax, or the stream is corrupt.
    """
    tsuid = _transfer_syntax(ds)
    syntax = _syntax_name(tsuid)
    if "PixelData" not in ds:
        reason = (
            "float pixel data is not supported"
            if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds)
            else "no Pixel Data element"
        )
        raise ImageDecodeError(syntax, reason)
    for keyword in ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"):
        if keyword not in ds:
            raise ImageDecodeError(syntax, f"required attribute {keyword} is missing")
    try:
        check_pixels(ds)
    except LimitExceeded as exc:
        raise ImageDecodeError(syntax, str(exc)) from exc
    try:
        frame = pixel_array(ds, index=0)
    except ImageDecodeError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise a variety of types for corrupt streams
        raise ImageDecodeError(syntax, f"{type(exc).__name__}: {exc}") from exc
    rows, cols = int(ds.Rows), int(ds.Columns)
    if frame.shape[:2] != (rows, cols):
        raise ImageDecodeError(
            syntax, f"decoded shape {frame.shape} does not match Rows/Columns {(rows, cols)}"
        )
    return np.asarray(frame)


def _to_grey_unit(rgb: NDArray[Any], bits: int) -> NDArray[np.float64]:
    scale = float(2**bits - 1) if bits > 0 else 255.0
    grey = np.asarray(rgb, dtype=np.float64)[..., :3] @ _LUMA_WEIGHTS
    return np.clip(grey / scale, 0.0, 1.0)


def _first_value(value: Any) -> float:
    if isinstance(value, (list, tuple)) or (
        hasattr(value, "__iter__") and not isinstance(value, str)
    ):
        items = list(value)
        if not items:
            raise ValueError("empty multi-valued attribute")
        value = items[0]
    return float(value)


def _window_from_header(ds: Dataset) -> tuple[float, float, WindowFunction] | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center = _first_value(ds.WindowCenter)
        width = _first_value(ds.WindowWidth)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(center) and math.isfinite(width)):
        return None
    raw_function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    function: WindowFunction
    if raw_function in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = raw_function  # type: ignore[assignment]
    else:
        logger.warning("unknown VOI LUT Function %r, using LINEAR", raw_function)
        function = "LINEAR"
    minimum = 1.0 if function == "LINEAR" else 0.0
    if width < minimum or width <= 0:
        return None
    return center, width, function


def _has_voi_lut_sequence(ds: Dataset) -> bool:
    seq = ds.get("VOILUTSequence")
    if not seq:
        return False
    item = seq[0]
    return "LUTDescriptor" in item and "LUTData" in item


def _apply_voi_lut_sequence(ds: Dataset, values: NDArray[Any]) -> NDArray[np.float64]:
    """Apply the first VOI LUT and scale its output range to ``[0, 1]``.

    The output range is taken from the LUT data itself: many devices declare 16 bits per entry
    while filling only 12, and scaling by the declared depth would render them almost black.
    """
    integer = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
    mapped = np.asarray(apply_voi(integer, ds, index=0), dtype=np.float64)
    item = ds.VOILUTSequence[0]
    descriptor = [int(v) for v in item.LUTDescriptor]
    lut = np.asarray(
        apply_voi(np.arange(descriptor[1], descriptor[1] + (descriptor[0] or 65536)), ds, 0)
    )
    low, high = float(lut.min()), float(lut.max())
    if high <= low:
        return np.zeros_like(mapped)
    return np.clip((mapped - low) / (high - low), 0.0, 1.0)


def _padding_mask(ds: Dataset, stored: NDArray[Any]) -> NDArray[np.bool_] | None:
    if "PixelPaddingValue" not in ds:
        return None
    try:
        pad = int(ds.PixelPaddingValue)
    except (TypeError, ValueError):
        return None
    if "PixelPaddingRangeLimit" in ds:
        limit = int(ds.PixelPaddingRangeLimit)
        lo, hi = min(pad, limit), max(pad, limit)
        padded = (stored >= lo) & (stored <= hi)
    else:
        padded = stored == pad
    keep = ~padded
    return keep if keep.any() else None


def load_display_image(
    source: str | Path | Dataset,
    *,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    prefer_voi_lut_sequence: bool = True,
) -> DisplayImage:
    """Decode a DICOM image and render its first frame as 8-bit grey.

    Parameters
    ----------
    source
        Path of a DICOM file or an already-read dataset (with pixel data).
    percentiles
        Fallback window (percentiles of the modality values) used when the file carries neither
        a VOI LUT Sequence nor a usable window.
    prefer_voi_lut_sequence
        When a file has both a VOI LUT Sequence and a window, use the sequence.

    Returns
    -------
    DisplayImage
        The ``uint8`` image and a record of every step applied.

    Raises
    ------
    ImageDecodeError
        When the file cannot be parsed or its pixel data cannot be decoded.
    FileNotFoundError
        When the path does not exist.
    """
    ds = read_dataset(source)
    tsuid = _transfer_syntax(ds)
    stored = decode_first_frame(ds)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    bits_stored = int(ds.get("BitsStored", ds.BitsAllocated))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    steps: list[str] = [f"decoded frame 1 of {frames} ({_syntax_name(tsuid)})"]
    sop_uid = str(ds.SOPInstanceUID) if "SOPInstanceUID" in ds else None

    colour_converted = False
    modality_kind: Literal["rescale", "lut_sequence", "none"] = "none"
    slope, intercept = 1.0, 0.0
    voi_source: VoiSource = "none"
    window_center: float | None = None
    window_width: float | None = None
    window_function: WindowFunction | None = None
    inverted = False

    if stored.ndim == 3 or photometric == "PALETTE COLOR":
        rgb = stored
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(stored, ds)
            depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
            bits = 16 if depth > 8 else 8
            steps.append("palette colour lookup")
        else:
            bits = bits_stored
        unit = _to_grey_unit(rgb, bits)
        colour_converted = True
        steps.append(f"colour ({photometric}) to grey, BT.601 luma")
    else:
        modality = _apply_modality(ds, stored)
        if ds.get("ModalityLUTSequence"):
            modality_kind = "lut_sequence"
            steps.append("modality LUT sequence")
        elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
            modality_kind = "rescale"
            slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            steps.append(f"rescale slope={slope:g} intercept={intercept:g}")

        window = _window_from_header(ds)
        use_lut = _has_voi_lut_sequence(ds) and (prefer_voi_lut_sequence or window is None)
        if use_lut:
            unit = _apply_voi_lut_sequence(ds, modality)
            voi_source = "voi_lut_sequence"
            steps.append("VOI LUT sequence (first item)")
        elif window is not None:
            window_center, window_width, window_function = window
            unit = window_to_unit(modality, window_center, window_width, window_function)
            voi_source = "window"
            steps.append(
                f"window center={window_center:g} width={window_width:g} {window_function}"
            )
        else:
            low, high = percentile_window(modality, percentiles, _padding_mask(ds, stored))
            window_function = "LINEAR_EXACT"
            window_center = (low + high) / 2.0
            window_width = high - low
            voi_source = "percentile"
            if high > low:
                unit = np.clip((np.asarray(modality, dtype=np.float64) - low) / (high - low), 0, 1)
            else:
                unit = np.zeros(modality.shape, dtype=np.float64)
            steps.append(
                f"percentile window {percentiles[0]:g}-{percentiles[1]:g} "
                f"(values {low:g}..{high:g})"
            )

        shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
        if photometric == "MONOCHROME1":
            inverted = True
            steps.append("MONOCHROME1 inverted")
        elif shape == "INVERSE":
            inverted = True
            steps.append("Presentation LUT Shape INVERSE")
        if inverted:
            unit = 1.0 - unit

    pixels = unit_to_uint8(unit)
    steps.append("quantised to 8 bits")
    return DisplayImage(
        pixels=pixels,
        transfer_syntax_uid=str(tsuid),
        transfer_syntax_name=_syntax_name(tsuid),
        photometric_interpretation=photometric,
        number_of_frames=frames,
        bits_stored=bits_stored,
        modality_lut=modality_kind,
        rescale_slope=slope,
        rescale_intercept=intercept,
        voi_source=voi_source,
        window_center=window_center,
        window_width=window_width,
        window_function=window_function,
        inverted=inverted,
        colour_converted=colour_converted,
        sop_instance_uid=sop_uid,
        steps=tuple(steps),
    )


def _apply_modality(ds: Dataset, stored: NDArray[Any]) -> NDArray[Any]:
    try:
        return np.asarray(apply_modality_lut(stored, ds))
    except Exception as exc:  # malformed LUT descriptors and the like
        raise ImageDecodeError(
            _syntax_name(_transfer_syntax(ds)), f"modality LUT could not be applied: {exc}"
        ) from exc


# --------------------------------------------------------------------------------------------
# Model input
# --------------------------------------------------------------------------------------------


def resize_short_side(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Resize so that the shorter side equals ``size`` (the longer side is truncated to int).

    Matches ``torchvision.transforms.Resize(size)`` on PIL images, which open_clip and the
    CXR-LLaVA pipeline use.
    """
    width, height = image.size
    if min(width, height) == size:
        return image
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    return image.resize((new_w, new_h), resample=resample)


def center_crop(
    image: Image.Image, size: int, offset: Literal["round", "floor"] = "round"
) -> Image.Image:
    """Crop the central ``size`` x ``size`` square.

    Parameters
    ----------
    image
        Image at least ``size`` pixels on each side.
    size
        Side of the square.
    offset
        ``"round"``: torchvision's ``round((side - size) / 2)`` (Python rounds half to even,
        so a remainder of 3 starts at 2); ``"floor"``: the Hugging Face image processors'
        ``(side - size) // 2`` (a remainder of 3 starts at 1).
    """
    width, height = image.size
    if offset == "floor":
        left, top = (width - size) // 2, (height - size) // 2
    else:
        left = int(round((width - size) / 2.0))
        top = int(round((height - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_model_input(image8: NDArray[np.uint8], spec: PreprocessSpec) -> NDArray[np.float32]:
    """Turn an 8-bit grey image into one normalised encoder input.

    Parameters
    ----------
    image8
        ``uint8`` array ``(rows, columns)``.
    spec
        Resize size and filter, channel count and normalisation statistics of the encoder.

    Returns
    -------
    numpy.ndarray
        ``float32`` array ``(channels, size, size)``: ``(pixel / 255 - mean[c]) / std[c]``,
        the grey channel replicated when ``channels == 3``.

    Raises
    ------
    ValueError
        If the image is not a 2-D ``uint8`` array.
    """
    array = np.asarray(image8)
    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {array.dtype} {array.shape}")
    picture = Image.fromarray(array, mode="L")
    picture = resize_short_side(picture, spec.size, PIL_RESAMPLE[spec.resample])
    picture = center_crop(picture, spec.size, spec.crop_offset)
    grey = np.asarray(picture, dtype=np.float32) / np.float32(255.0)
    mean = _per_channel(spec.mean, spec.channels)
    std = _per_channel(spec.std, spec.channels)
    stacked = np.broadcast_to(grey, (spec.channels, spec.size, spec.size))
    normalised = (stacked - mean[:, None, None]) / std[:, None, None]
    return np.ascontiguousarray(normalised, dtype=np.float32)


def _per_channel(values: Sequence[float], channels: int) -> NDArray[np.float32]:
    array = np.asarray(values, dtype=np.float32)
    if array.size == 1:
        return np.repeat(array, channels)
    return array


__all__ = [
    "DEFAULT_PERCENTILES",
    "PIL_RESAMPLE",
    "DisplayImage",
    "ImageDecodeError",
    "center_crop",
    "decode_first_frame",
    "load_display_image",
    "percentile_window",
    "read_dataset",
    "resize_short_side",
    "to_model_input",
    "unit_to_uint8",
    "window_to_unit",
]
