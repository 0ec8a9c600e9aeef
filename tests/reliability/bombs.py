"""Decompression bombs: small objects that stand for enormous ones.

* a Deflated Explicit VR Little Endian data set of about 1.4 MB whose body inflates to
  1.5 GB (a Pixel Data element of zeros);
* an RLE Lossless image of 16384 x 16384 pixels, 4 MB encoded (runs of 128 zeros).

Both are built in a streamed way: the test process never holds the inflated size.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, RLELossless

from tests.dicom_factory import make_cxr_dataset

INFLATED_BYTES = 1_500_000_000
RLE_SIDE = 16384
_CHUNK = 1 << 20


def _part10_head(ds: Dataset, transfer_syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, ds.file_meta, enforce_standard=True)
    return bytes(out.getvalue())


def _explicit_le(ds: Dataset) -> bytes:
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return bytes(out.getvalue())


def write_deflate_bomb(path: Path, inflated_bytes: int = INFLATED_BYTES) -> Dataset:
    """Write a deflated data set whose body inflates to ``inflated_bytes``; return its
    header (identifiers) for the C-STORE request."""
    ds = make_cxr_dataset(rows=16, cols=16, bits=8)
    del ds.PixelData
    pixel_header = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, inflated_bytes)
    body_head = _explicit_le(ds) + pixel_header
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(_CHUNK)
    # After a full flush the compressor starts afresh, so every further megabyte of
    # zeros compresses to the same bytes: compress it twice, then repeat the block.
    head = compressor.compress(body_head) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert block == again
    blocks, rest = divmod(inflated_bytes, _CHUNK)
    with path.open("wb") as out:
        out.write(_part10_head(ds, DeflatedExplicitVRLittleEndian))
        out.write(head)
        for _ in range(blocks):
            out.write(block)
        out.write(compressor.compress(zeros[:rest]) + compressor.flush())
    return ds


def write_rle_bomb(path: Path, side: int = RLE_SIDE) -> Dataset:
    """Write an 8-bit RLE Lossless image of ``side`` x ``side`` pixels; return it."""
    ds = make_cxr_dataset(rows=16, cols=16, bits=8)
    ds.Rows = ds.Columns = side
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.SamplesPerPixel = 1
    runs = side * side // 128
    segment = b"\x81\x00" * runs  # each pair: repeat the next byte 128 times
    frame = struct.pack("<16L", 1, 64, *([0] * 14)) + segment
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.save_as(path, enforce_file_format=True)
    return ds
