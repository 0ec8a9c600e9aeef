"""Build real DICOM chest radiograph files for tests.

Everything here produces standard-conformant Part 10 files (file meta, SOP class, UIDs) so that
the same objects can be sent over the network, stored, decoded and compressed with DCMTK.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    JPEG2000,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")

DcmtkSyntax = Literal[
    "explicit_little",
    "implicit_little",
    "explicit_big",
    "deflate",
    "jpeg_baseline",
    "jpeg_extended",
    "jpeg_lossless",
    "jpeg_lossless_sv1",
    "jpegls_lossless",
    "jpegls_near_lossless",
    "rle",
]

# Transfer syntax written by each DCMTK conversion, for assertions.
DCMTK_SYNTAX_UIDS: dict[str, UID] = {
    "explicit_little": ExplicitVRLittleEndian,
    "implicit_little": pydicom.uid.ImplicitVRLittleEndian,
    "explicit_big": ExplicitVRBigEndian,
    "deflate": DeflatedExplicitVRLittleEndian,
    "jpeg_baseline": JPEGBaseline8Bit,
    "jpeg_extended": JPEGExtended12Bit,
    "jpeg_lossless": JPEGLossless,
    "jpeg_lossless_sv1": JPEGLosslessSV1,
    "jpegls_lossless": JPEGLSLossless,
    "jpegls_near_lossless": JPEGLSNearLossless,
    "rle": RLELossless,
}

_DCMTK_COMMANDS: dict[str, list[str]] = {
    "explicit_little": ["dcmconv", "+te"],
    "implicit_little": ["dcmconv", "+ti"],
    "explicit_big": ["dcmconv", "+tb"],
    "deflate": ["dcmconv", "+td"],
    "jpeg_baseline": ["dcmcjpeg", "+eb", "+q", "95", "+un"],
    "jpeg_extended": ["dcmcjpeg", "+ee", "+q", "95", "+un"],
    "jpeg_lossless": ["dcmcjpeg", "+el", "+sv", "6", "+un"],
    "jpeg_lossless_sv1": ["dcmcjpeg", "+e1", "+un"],
    "jpegls_lossless": ["dcmcjpls", "+el", "+un"],
    "jpegls_near_lossless": ["dcmcjpls", "+en", "+md", "2", "+un"],
    "rle": ["dcmcrle", "+un"],
}


def dcmtk_available() -> bool:
    """Whether the DCMTK command-line tools needed here are on ``PATH``."""
    return all(shutil.which(tool) for tool in ("dcmconv", "dcmcjpeg", "dcmcjpls", "dcmcrle"))


def synthetic_chest(rows: int = 256, cols: int = 256, *, seed: int = 0) -> NDArray[np.float64]:
    """Return a chest-radiograph-like image in ``[0, 1]`` (1 = dense/white, 0 = air/black).

    A soft body ellipse, two dark lung fields, a bright mediastinum and heart, diaphragm domes
    and mild noise; enough structure for windowing, compression and view tests.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    y = yy / max(rows - 1, 1)
    x = xx / max(cols - 1, 1)
    image = np.full((rows, cols), 0.05)
    body = ((x - 0.5) / 0.46) ** 2 + ((y - 0.55) / 0.55) ** 2 <= 1.0
    image[body] = 0.55
    for centre_x in (0.3, 0.7):
        lung = ((x - centre_x) / 0.17) ** 2 + ((y - 0.45) / 0.32) ** 2 <= 1.0
        image[lung] = 0.2 + 0.05 * y[lung]
    mediastinum = (np.abs(x - 0.5) < 0.07) & (y > 0.1) & (y < 0.8)
    image[mediastinum] = 0.7
    heart = ((x - 0.54) / 0.14) ** 2 + ((y - 0.66) / 0.12) ** 2 <= 1.0
    image[heart] = 0.72
    diaphragm = y > 0.8 - 0.05 * np.cos((x - 0.5) * 6.0)
    image[diaphragm & body] = 0.75
    image += rng.normal(0.0, 0.01, size=image.shape)
    return np.clip(image, 0.0, 1.0)


def _view_code_item(view_position: str) -> Dataset | None:
    codes = {
        "PA": ("272479007", "SCT", "postero-anterior"),
        "AP": ("399348003", "SCT", "antero-posterior"),
        "LL": ("399173006", "SCT", "left lateral"),
        "RL": ("399198007", "SCT", "right lateral"),
        "LATERAL": ("399067008", "SCT", "lateral"),
    }
    if view_position not in codes:
        return None
    value, scheme, meaning = codes[view_position]
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def make_cxr_dataset(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    modality: str = "DX",
    view_position: str | None = "PA",
    body_part: str = "CHEST",
    rows: int = 256,
    cols: int = 256,
    bits: int = 16,
    photometric: str = "MONOCHROME2",
    patient_name: str = "TEST^PATIENT",
    patient_id: str = "TEST-0001",
    image: NDArray[np.generic] | None = None,
    reason_for_exam: str | None = None,
    rescale: tuple[float, float] | None = None,
    windows: Sequence[tuple[float, float]] | None = None,
    voi_lut_function: str | None = None,
    frames: int = 1,
    view_code: str | None = None,
    series_description: str | None = None,
    protocol_name: str | None = None,
    image_comments: str | None = None,
    laterality: str | None = None,
    accession_number: str = "ACC0001",
    series_number: int = 1,
    instance_number: int = 1,
    seed: int = 0,
) -> Dataset:
    """Build a chest radiograph dataset with pixel data (Explicit VR Little Endian meta).

    Parameters
    ----------
    study_uid, series_uid, sop_uid
        UIDs; fresh ones are generated when omitted.
    modality
        ``"DX"`` (DX For Presentation SOP class), ``"CR"`` or anything else (Secondary Capture).
    view_position
        (0018,5101) View Position; ``None`` leaves it out.
    rows, cols
        Matrix size when ``image`` is not given.
    bits
        Bits Stored: ``8`` (8 allocated) or ``9..16`` (16 allocated), unsigned.
    photometric
        ``MONOCHROME2``, ``MONOCHROME1`` (stored values inverted so that the displayed image is
        the same) or ``RGB`` (grey replicated in three samples, 8 bits).
    image
        Stored values to use as-is (shape ``(rows, cols)`` or ``(frames, rows, cols)``;
        ``(rows, cols, 3)`` for RGB); by default a synthetic chest scaled to the bit depth.
    reason_for_exam
        Written to (0040,1002) Reason for the Requested Procedure.
    rescale
        ``(slope, intercept)`` for (0028,1053)/(0028,1052).
    windows
        ``[(center, width), ...]`` for (0028,1050)/(0028,1051).
    voi_lut_function
        (0028,1056) VOI LUT Function.
    frames
        Number of frames (the synthetic image is repeated with slight changes).
    view_code
        View Position key for a (0054,0220) View Code Sequence item (``PA``, ``AP``, ``LL``,
        ``RL``, ``LATERAL``).
    series_description, protocol_name, image_comments, laterality
        Optional descriptive attributes.
    seed
        Noise seed of the synthetic image.

    Returns
    -------
    pydicom.dataset.Dataset
        A dataset with ``file_meta`` set, ready for :func:`write_dataset`.
    """
    sop_class = {"DX": DX_FOR_PRESENTATION, "CR": CR_IMAGE_STORAGE}.get(modality, SECONDARY_CAPTURE)
    sop_uid = sop_uid or generate_uid()
    colour = photometric == "RGB"
    bits_allocated = 8 if (bits <= 8 or colour) else 16
    bits_stored = 8 if colour else bits
    max_value = 2**bits_stored - 1

    if image is None:
        base = synthetic_chest(rows, cols, seed=seed)
        stack = [base if i == 0 else np.clip(base * (1.0 - 0.02 * i), 0, 1) for i in range(frames)]
        scaled = np.rint(np.stack(stack) * max_value)
        if photometric == "MONOCHROME1":
            scaled = max_value - scaled
        pixels: NDArray[np.generic] = scaled.astype(np.uint8 if bits_allocated == 8 else np.uint16)
        if colour:
            pixels = np.repeat(pixels[..., None], 3, axis=-1)
        if frames == 1:
            pixels = pixels[0]
    else:
        pixels = np.asarray(image)
    if frames == 1:
        rows, cols = int(pixels.shape[0]), int(pixels.shape[1])
    else:
        rows, cols = int(pixels.shape[1]), int(pixels.shape[2])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    now = datetime(2024, 5, 17, 9, 30, 0)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AccessionNumber = accession_number
    ds.Modality = modality
    ds.Manufacturer = "RADNODE TEST"
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = body_part
    if view_position is not None:
        ds.ViewPosition = view_position
    if view_code is not None:
        item = _view_code_item(view_code)
        if item is not None:
            ds.ViewCodeSequence = DicomSequence([item])
    if series_description is not None:
        ds.SeriesDescription = series_description
    if protocol_name is not None:
        ds.ProtocolName = protocol_name
    if image_comments is not None:
        ds.ImageComments = image_comments
    if laterality is not None:
        ds.ImageLaterality = laterality
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ["L", "F"]
    if reason_for_exam is not None:
        ds.ReasonForTheRequestedProcedure = reason_for_exam

    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    if rescale is not None or modality == "DX":
        slope, intercept = rescale if rescale is not None else (1.0, 0.0)
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"
    if windows:
        centers = [f"{c:g}" for c, _ in windows]
        widths = [f"{w:g}" for _, w in windows]
        ds.WindowCenter = centers if len(centers) > 1 else centers[0]
        ds.WindowWidth = widths if len(widths) > 1 else widths[0]
    if voi_lut_function is not None:
        ds.VOILUTFunction = voi_lut_function
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
    return ds


def write_dataset(ds: Dataset, path: Path | str) -> Path:
    """Write ``ds`` as a Part 10 file (preamble, file meta) and return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return target


def compress_with_dcmtk(src: Path | str, dst: Path | str, syntax: DcmtkSyntax) -> Path:
    """Convert a file to another transfer syntax with the DCMTK command-line tools.

    Parameters
    ----------
    src, dst
        Input and output paths.
    syntax
        One of :data:`DcmtkSyntax` (the key into :data:`DCMTK_SYNTAX_UIDS`).

    Returns
    -------
    Path
        ``dst``.

    Raises
    ------
    RuntimeError
        When the tool fails (its stderr is included).
    """
    command = [*_DCMTK_COMMANDS[syntax], str(src), str(dst)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed: {result.stderr.strip()}")
    return Path(dst)


def compress_jpeg2000(src: Path | str, dst: Path | str, *, lossless: bool = True) -> Path:
    """Encode a file as JPEG 2000 with pydicom's encoders (pylibjpeg-openjpeg).

    DCMTK's free toolkit has no JPEG 2000 codec, so this is the reference encoder here.
    """
    ds = pydicom.dcmread(src)
    if lossless:
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    else:
        ds.compress(
            JPEG2000,
            generate_instance_uid=False,
            j2k_psnr=[60.0],
        )
    ds.save_as(dst, enforce_file_format=True)
    return Path(dst)


def corrupt_pixel_stream(src: Path | str, dst: Path | str) -> Path:
    """Write a copy of an encapsulated file whose first fragment is truncated and garbled."""
    ds = pydicom.dcmread(src)
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        raise ValueError("corrupt_pixel_stream expects an encapsulated (compressed) file")
    from pydicom.encaps import encapsulate, generate_fragments

    fragments = list(generate_fragments(ds.PixelData))
    first = bytearray(fragments[0])
    keep = max(len(first) // 3, 16)
    garbled = bytes(first[:4]) + bytes((b ^ 0x5A) for b in first[4:keep])
    ds.PixelData = encapsulate([garbled])
    ds.save_as(dst, enforce_file_format=True)
    return Path(dst)


__all__ = [
    "CR_IMAGE_STORAGE",
    "DCMTK_SYNTAX_UIDS",
    "DX_FOR_PRESENTATION",
    "DcmtkSyntax",
    "compress_jpeg2000",
    "compress_with_dcmtk",
    "corrupt_pixel_stream",
    "dcmtk_available",
    "make_cxr_dataset",
    "synthetic_chest",
    "write_dataset",
]
