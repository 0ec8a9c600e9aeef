"""Structural check of received bytes: whole instances pass, truncated ones do not."""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.dicom.structure import StructureError, check_part10
from tests.dicom_factory import make_cxr_dataset
from tests.integration.dicom_files import split_part10

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _meta_length(data: bytes) -> int:
    _, body = split_part10(data)
    return len(data) - len(body)


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # explicit VR little endian
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "ExplVR_BigEnd.dcm",
        "image_dfl.dcm",  # deflated
        "rtplan.dcm",  # nested sequences, implicit VR
        "reportsi.dcm",  # SR content tree, undefined-length items
        "nested_priv_SQ.dcm",  # private sequences
        "UN_sequence.dcm",  # UN with undefined length holding a sequence
        "JPEG2000.dcm",  # encapsulated pixel data
        "SC_rgb_small_odd.dcm",
        "waveform_ecg.dcm",
    ],
)
def test_whole_files_pass(name: str) -> None:
    """Conformant files of every encoding pass the check."""
    check_part10((TEST_FILES / name).read_bytes())


@pytest.mark.parametrize("name", ["rtplan_truncated.dcm", "MR_truncated.dcm"])
def test_truncated_files_fail(name: str) -> None:
    """Files cut short fail, although pydicom reads them without complaint."""
    data = (TEST_FILES / name).read_bytes()
    pydicom.dcmread(BytesIO(data))  # lenient: no error
    with pytest.raises(StructureError, match="remain"):
        check_part10(data)


def test_every_cut_inside_an_element_fails() -> None:
    """Cutting the dataset at any byte passes only on an element boundary."""
    ds = make_cxr_dataset(rows=4, cols=4, bits=8)
    data = _part10(ds)
    start = _meta_length(data)
    boundaries = {start}
    long_vrs = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                b"UT", b"UV"}
    stream = BytesIO(data[start:])
    offset = 0
    while offset < len(data) - start:
        stream.seek(offset)
        _, _, vr = struct.unpack("<HH2s", stream.read(6))
        if vr in long_vrs:
            stream.seek(offset + 8)
            (length,) = struct.unpack("<I", stream.read(4))
            offset += 12 + length
        else:
            (length,) = struct.unpack("<H", stream.read(2))
            offset += 8 + length
        boundaries.add(start + offset)
    for cut in range(start, len(data) + 1):
        if cut in boundaries:
            check_part10(data[:cut])
        else:
            with pytest.raises(StructureError):
                check_part10(data[:cut])


def _with_sequence(delimited: bool) -> bytes:
    ds = make_cxr_dataset(rows=4, cols=4, bits=8)
    item = Dataset()
    item.CodeValue = "272479007"
    item.CodingSchemeDesignator = "SCT"
    ds.ViewCodeSequence = Sequence([item])
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    data = _part10(ds)
    if not delimited:
        return data
    # Re-encode the sequence with undefined lengths, as many modalities do.
    raw = bytearray(data)
    sq = raw.index(struct.pack("<HH", 0x0054, 0x0220))
    (sq_length,) = struct.unpack_from("<I", raw, sq + 4)
    (item_length,) = struct.unpack_from("<I", raw, sq + 12)
    items = raw[sq + 16 : sq + 16 + item_length]
    undefined = (
        struct.pack("<HHI", 0x0054, 0x0220, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        + items
        + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    )
    return bytes(raw[:sq] + undefined + raw[sq + 8 + sq_length :])


def test_undefined_length_sequence_passes_and_missing_delimiter_fails() -> None:
    """Delimited sequences pass; without their delimiters they fail."""
    data = _with_sequence(delimited=True)
    check_part10(data)
    assert pydicom.dcmread(BytesIO(data)).ViewCodeSequence[0].CodeValue == "272479007"
    without_end = data.replace(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0), b"")
    with pytest.raises(StructureError):
        check_part10(without_end)


def test_defined_length_sequence_item_overrun_fails() -> None:
    """An item longer than its sequence fails."""
    data = bytearray(_with_sequence(delimited=False))
    sq = data.index(struct.pack("<HH", 0x0054, 0x0220))
    (item_length,) = struct.unpack_from("<I", data, sq + 12)
    struct.pack_into("<I", data, sq + 12, item_length + 8)
    with pytest.raises(StructureError, match="item declares"):
        check_part10(bytes(data))


def test_deflated_stream_cut_short_fails() -> None:
    """A deflated dataset whose compressed stream is cut short fails."""
    ds = make_cxr_dataset(rows=16, cols=16, bits=8)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = _part10(ds)
    check_part10(data)
    check_part10(data + b"\x00")  # a trailing pad byte after the stream is fine
    start = _meta_length(data)
    assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[start:])
    with pytest.raises(StructureError):
        check_part10(data[: start + (len(data) - start) // 2])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no DICM prefix"),
        (b"\x00" * 128 + b"DICX", "no DICM prefix"),
    ],
)
def test_not_part10_fails(data: bytes, message: str) -> None:
    """Streams without the Part 10 prefix fail."""
    with pytest.raises(StructureError, match=message):
        check_part10(data)


def test_missing_transfer_syntax_fails() -> None:
    """File meta without a Transfer Syntax UID fails."""
    data = (TEST_FILES / "meta_missing_tsyntax.dcm").read_bytes()
    with pytest.raises(StructureError, match="transfer syntax"):
        check_part10(data)
