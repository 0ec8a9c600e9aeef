"""Validate a received dataset and extract the header facts the node indexes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.filereader import read_dataset, read_partial
from pydicom.tag import BaseTag
from pydicom.uid import UID

from node.dicom.buffers import COPY_MAX_BYTES, EncodedBuffer, binary_stream
from node.dicom.structure import PixelDataSpan, StructureError, check_part10
from node.storage import is_valid_uid


class HeaderError(ValueError):
    """The dataset cannot be understood (answered with 0xC210)."""


class ControlCharacterError(HeaderError):
    """An indexed text value holds a NUL character (answered with 0xC210 and audited).

    PostgreSQL cannot store NUL in text and SQLite can; refusing it on both keeps one
    outcome on every database. Trailing NUL padding is not refused (pydicom strips it).
    """

    def __init__(self, keyword: str) -> None:
        super().__init__(f"{keyword} contains a NUL character")
        self.keyword = keyword


#: Indexed header facts and the attribute each one comes from (for refusal messages).
_INDEXED_KEYWORDS = {
    "patient_id": "PatientID", "issuer_of_patient_id": "IssuerOfPatientID",
    "patient_name": "PatientName", "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex", "accession_number": "AccessionNumber",
    "study_id_text": "StudyID", "study_date": "StudyDate", "study_time": "StudyTime",
    "study_description": "StudyDescription",
    "referring_physician": "ReferringPhysicianName",
    "reason_for_exam": "ReasonForTheRequestedProcedure", "modality": "Modality",
    "body_part": "BodyPartExamined", "view_position": "ViewPosition",
    "image_laterality": "ImageLaterality", "series_description": "SeriesDescription",
}


def _refuse_nul(header: InstanceHeader) -> None:
    """Raise :class:`ControlCharacterError` if an indexed text value holds NUL."""
    values: dict[str, str | None] = {**header.patient, **header.study}
    for name in ("modality", "body_part", "view_position", "image_laterality",
                 "series_description"):
        values[name] = getattr(header, name)
    for name, value in values.items():
        if value is not None and "\x00" in value:
            raise ControlCharacterError(_INDEXED_KEYWORDS[name])


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|b'[^']*'")


def _describe(exc: Exception) -> str:
    """Describe a decoding error without echoing element values (they may be PHI)."""
    message = _QUOTED.sub("'...'", str(exc))[:200]
    return f"{type(exc).__name__}: {message}"


@dataclass(frozen=True)
class InstanceHeader:
    """What the node keeps about one instance (identifiers and routing facts)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    series_number: int | None
    instance_number: int | None
    modality: str | None
    body_part: str | None
    view_position: str | None
    image_laterality: str | None
    series_description: str | None
    image_type: str | None
    conversion_type: str | None
    rows: int | None
    columns: int | None
    patient: dict[str, str | None]
    study: dict[str, str | None]


def _text(ds: Dataset, keyword: str, limit: int | None = None) -> str | None:
    value: Any = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    if not text:
        return None
    return text[:limit] if limit else text


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _required_uid(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword)
    if value is None:
        raise HeaderError(f"{keyword} is missing")
    if not is_valid_uid(value):
        raise HeaderError(f"{keyword} is not a valid UID")
    return value


def _reason_for_exam(ds: Dataset) -> str | None:
    for keyword in (
        "ReasonForTheRequestedProcedure",
        "ReasonForStudy",
        "RequestedProcedureDescription",
        "AdmittingDiagnosesDescription",
    ):
        text = _text(ds, keyword)
        if text:
            return text
    for item in ds.get("RequestAttributesSequence", []) or []:
        text = _text(item, "ReasonForTheRequestedProcedure")
        if text:
            return text
    return None


_PIXEL_DATA_TAG = 0x7FE00010
#: VRs of a Pixel Data value that is kept as bytes (nothing to decode, nothing to check).
_RAW_PIXEL_VRS = frozenset({"OB", "OW", "OB or OW"})


def _at_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag == _PIXEL_DATA_TAG)


def _read_dataset(encoded: EncodedBuffer,
                  span: PixelDataSpan | None) -> tuple[Dataset, PixelDataSpan | None]:
    """Read the data set, all but a skippable top-level Pixel Data value.

    A large Pixel Data value (the bulk of an image) is neither copied nor decoded when
    the structure walk has measured it: a native value of defined length, or
    encapsulated fragments. Every other element, those after the pixel data included,
    is read.

    Returns
    -------
    tuple
        The data set, and the span of the Pixel Data left out (``None``: the data set
        holds its Pixel Data, if any).
    """
    reader = binary_stream(encoded)
    if span is None or span.vr not in _RAW_PIXEL_VRS \
            or span.end_offset - span.value_offset <= COPY_MAX_BYTES:
        return dcmread(reader, force=False), None
    ds = read_partial(reader, stop_when=_at_pixel_data, force=False)
    encapsulated = UID(ds.file_meta.TransferSyntaxUID).is_encapsulated
    measured = span.fragments is not None if encapsulated else span.length is not None
    if not measured or reader.tell() != span.element_offset:
        # pydicom stopped elsewhere than the structure walk found the element, or the
        # value's form does not fit the transfer syntax: read it all, as pydicom does.
        reader.seek(0)
        return dcmread(reader, force=False), None
    reader.seek(span.end_offset)
    implicit, little_endian = ds.original_encoding
    trailing = read_dataset(reader, bool(implicit), bool(little_endian),
                            parent_encoding=ds.original_character_set)
    ds.update(trailing)
    return ds, span


def _check_pixel_data(ds: Dataset, transfer_syntax: UID, span: PixelDataSpan | None) -> None:
    """Check the pixel data against its header: from ``span`` when the data set was read
    without its Pixel Data value, else from the value."""
    if span is None and "PixelData" not in ds:
        return
    if transfer_syntax.is_encapsulated:
        if span is not None:
            fragments = span.fragments or 0  # the structure walk checked every item
        else:
            try:
                fragments = sum(1 for _ in generate_fragments(ds.PixelData))
            except Exception as exc:
                raise HeaderError(
                    f"encapsulated pixel data is malformed: {_describe(exc)}") from exc
        if not fragments:
            raise HeaderError("encapsulated pixel data has no fragments")
        return
    length = span.length if span is not None else len(ds.PixelData)
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise HeaderError(f"image pixel module is incomplete: {_describe(exc)}") from exc
    if min(rows, columns, samples, frames) < 1 or bits not in (1, 8, 16, 32, 64):
        raise HeaderError("image pixel module declares impossible dimensions")
    expected_bits = rows * columns * samples * frames * bits
    expected = (expected_bits + 7) // 8
    # A value of odd length is padded with one byte to an even length (PS3.5 8.1.1).
    if length not in (expected, expected + expected % 2):
        raise HeaderError(
            f"pixel data holds {length} bytes but the header declares {expected}"
        )


def parse_header(encoded: EncodedBuffer) -> InstanceHeader:
    """Parse a received dataset (with its file meta) and validate it.

    Every value is decoded but a Pixel Data value of measured length, which is only
    checked against its header (and, encapsulated, its fragment structure).

    Parameters
    ----------
    encoded
        The instance as it will be stored: preamble, file meta and dataset (bytes, or
        a buffer such as a mapped file, which is never copied whole).

    Returns
    -------
    InstanceHeader
        Identifiers and routing facts.

    Raises
    ------
    HeaderError
        If the bytes are truncated or do not decode, required UIDs are missing
        or invalid, or the pixel data does not match its header.
    ControlCharacterError
        If an indexed text value (patient, study or series facts) holds a NUL.
    """
    try:
        pixel_data = check_part10(encoded)
    except StructureError as exc:
        raise HeaderError(f"dataset is truncated or malformed: {exc}") from exc
    try:
        ds, skipped_pixel_data = _read_dataset(encoded, pixel_data)
        transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
        for element in ds.iterall():  # forces every value to decode
            _ = element.value
    except HeaderError:
        raise
    except Exception as exc:
        raise HeaderError(f"dataset does not decode: {_describe(exc)}") from exc
    try:
        header = InstanceHeader(
            sop_class_uid=_required_uid(ds, "SOPClassUID"),
            sop_instance_uid=_required_uid(ds, "SOPInstanceUID"),
            study_instance_uid=_required_uid(ds, "StudyInstanceUID"),
            series_instance_uid=_required_uid(ds, "SeriesInstanceUID"),
            transfer_syntax_uid=str(transfer_syntax),
            series_number=_int(ds, "SeriesNumber"),
            instance_number=_int(ds, "InstanceNumber"),
            modality=_text(ds, "Modality", 16),
            body_part=_text(ds, "BodyPartExamined", 64),
            view_position=_text(ds, "ViewPosition", 16),
            image_laterality=_text(ds, "ImageLaterality", 16),
            series_description=_text(ds, "SeriesDescription", 64),
            image_type=_text(ds, "ImageType", 64),
            conversion_type=_text(ds, "ConversionType", 16),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            patient={
                "patient_id": _text(ds, "PatientID", 64),
                "issuer_of_patient_id": _text(ds, "IssuerOfPatientID", 64),
                "patient_name": _text(ds, "PatientName", 324),
                "patient_birth_date": _text(ds, "PatientBirthDate", 8),
                "patient_sex": _text(ds, "PatientSex", 16),
            },
            study={
                "accession_number": _text(ds, "AccessionNumber", 16),
                "study_id_text": _text(ds, "StudyID", 16),
                "study_date": _text(ds, "StudyDate", 8),
                "study_time": _text(ds, "StudyTime", 16),
                "study_description": _text(ds, "StudyDescription", 64),
                "referring_physician": _text(ds, "ReferringPhysicianName", 324),
                "reason_for_exam": _reason_for_exam(ds),
            },
        )
        _refuse_nul(header)
        _check_pixel_data(ds, transfer_syntax, skipped_pixel_data)
    except HeaderError:
        raise
    except Exception as exc:
        raise HeaderError(f"dataset does not decode: {_describe(exc)}") from exc
    return header
