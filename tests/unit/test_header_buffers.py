"""Parsing a received instance from a mapped file, its pixel data neither copied nor
decoded, with every check the node makes on received bytes."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import pydicom.data
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from node.dicom.buffers import COPY_MAX_BYTES, BufferReader, mapped_file
from node.dicom.header import HeaderError, InstanceHeader, _read_dataset, parse_header
from node.dicom.structure import check_part10
from tests.dicom_factory import make_cxr_dataset

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _outcome(encoded: bytes | memoryview) -> InstanceHeader | str:
    try:
        return parse_header(encoded)
    except HeaderError as exc:
        return str(exc)


SAMPLES = pytest.mark.parametrize("name", [
    "CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
    "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "image_dfl.dcm",
    "JPEG2000-embedded-sequence-delimiter.dcm",
])


@SAMPLES
def test_a_mapped_file_parses_as_its_bytes_do(name: str, tmp_path: Path) -> None:
    data = (TEST_FILES / name).read_bytes()
    copy = tmp_path / name
    copy.write_bytes(data)
    with mapped_file(copy) as view:
        assert isinstance(view, memoryview) and view.readonly
        assert _outcome(view) == _outcome(data)


@SAMPLES
def test_every_element_but_the_pixel_data_is_read(name: str) -> None:
    data = (TEST_FILES / name).read_bytes()
    whole, _ = _read_dataset(data, None)
    partial, skipped = _read_dataset(data, check_part10(data))
    expected: dict[int, object] = {
        element.tag: element.value for element in whole if element.tag != 0x7FE00010}
    if skipped is None:
        expected[0x7FE00010] = whole.PixelData
    assert {element.tag: element.value for element in partial} == expected


def _large_cxr(**changes: object) -> Dataset:
    """An image whose pixel data (2 MiB) is worth leaving out of the parse."""
    ds = make_cxr_dataset(rows=1024, cols=1024, bits=16)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("syntax", ["native", "encapsulated"])
def test_a_large_pixel_data_value_is_left_out_and_every_other_element_read(
        syntax: str) -> None:
    ds = _large_cxr()
    if syntax == "encapsulated":
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([b"\xff\xd8" + bytes(COPY_MAX_BYTES) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
    ds.add(DataElement(0x7FE10010, "LO", "ACME"))
    ds.add(DataElement(0x7FE11001, "FL", 1.5))
    data = _part10(ds)
    whole, _ = _read_dataset(data, None)
    partial, skipped = _read_dataset(data, check_part10(data))
    assert skipped is not None and "PixelData" not in partial
    assert {element.tag: element.value for element in partial} == {
        element.tag: element.value for element in whole if element.tag != 0x7FE00010}
    assert partial[0x7FE11001].value == 1.5
    assert isinstance(parse_header(data), InstanceHeader)


def test_the_pixel_data_span_is_where_the_element_is() -> None:
    data = _part10(make_cxr_dataset(rows=64, cols=32, bits=16))
    span = check_part10(data)
    assert span is not None and span.length == 64 * 32 * 2 and span.fragments is None
    assert data[span.element_offset:span.element_offset + 4] == b"\xe0\x7f\x10\x00"
    assert span.end_offset == len(data) and span.value_offset == span.end_offset - span.length


@pytest.mark.parametrize("rows", [64, 1024])
def test_a_value_after_the_pixel_data_is_still_decoded(rows: int) -> None:
    ds = make_cxr_dataset(rows=rows, cols=1024, bits=16)
    ds.add(DataElement(0x7FE10010, "LO", "ACME"))
    ds.add(DataElement(0x7FE11001, "FL", 1.5))
    good = _part10(ds)
    assert isinstance(parse_header(good), InstanceHeader)
    assert good.endswith(struct.pack("<HH2sHf", 0x7FE1, 0x1001, b"FL", 4, 1.5))
    # Three bytes cannot be a 32-bit float: the walk accepts the lengths, decoding does not.
    bad = good[:-12] + struct.pack("<HH2sH", 0x7FE1, 0x1001, b"FL", 3) + b"abc"
    with pytest.raises(HeaderError, match="does not decode"):
        parse_header(bad)


@pytest.mark.parametrize("rows", [64, 1024])
def test_native_pixel_data_is_measured_against_its_header(rows: int) -> None:
    ds = make_cxr_dataset(rows=rows, cols=1024, bits=16)
    ds.Rows = rows + 1
    with pytest.raises(HeaderError, match=f"pixel data holds {rows * 2048} bytes but the"):
        parse_header(_part10(ds))


def test_encapsulated_pixel_data_needs_a_fragment() -> None:
    ds = make_cxr_dataset(rows=8, cols=8, bits=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    ds["PixelData"].VR = "OB"
    encoded = _part10(ds)
    span = check_part10(encoded)
    assert span is not None and span.length is None and span.fragments == 2
    assert isinstance(parse_header(encoded), InstanceHeader)
    # No item at all, only the sequence delimiter: the node refuses it.
    start = span.value_offset
    empty = encoded[:start] + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    with pytest.raises(HeaderError, match="no fragments"):
        parse_header(empty)


def test_the_map_is_released_however_the_block_ends(tmp_path: Path) -> None:
    path = tmp_path / "instance"
    path.write_bytes(b"DICM" * 16)
    with mapped_file(path) as view:
        kept = view
        assert bytes(view[:4]) == b"DICM"
    with pytest.raises(ValueError, match="released"):
        len(kept)
    with pytest.raises(RuntimeError), mapped_file(path) as view:
        kept = view
        raise RuntimeError("refused")
    with pytest.raises(ValueError, match="released"):
        len(kept)
    path.write_bytes(b"")
    with mapped_file(path) as view:
        assert len(view) == 0


def test_a_buffer_reader_copies_only_what_is_read() -> None:
    reader = BufferReader(memoryview(b"0123456789"))
    assert reader.read(3) == b"012" and reader.tell() == 3
    assert reader.seek(-2, 2) == 8 and reader.read() == b"89" and reader.read(4) == b""
    assert reader.seek(2, 0) == 2 and reader.seek(1, 1) == 3 and reader.read(1) == b"3"
    with pytest.raises(ValueError):
        reader.seek(-1)
