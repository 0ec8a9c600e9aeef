"""Size limits checked before a DICOM data set is inflated or its pixels decoded.

A small compressed object can stand for an enormous one: a Deflated Explicit VR Little
Endian data set of a megabyte may inflate to gigabytes, and an RLE or JPEG image of a few
megabytes may declare 16384 x 16384 pixels. Every path that parses or decodes stored or
received instances (ingest, drafting, the web image and WADO metadata) checks these limits
first, from the header alone:

* the inflated size of a deflated data set, measured by streamed inflation with a cap
  (nothing larger than one chunk is ever held);
* the pixel count (Rows x Columns x NumberOfFrames x SamplesPerPixel) and the decoded
  size in bytes (pixel count x BitsAllocated / 8).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

_CHUNK = 1 << 20
_SIZE_KEYWORDS = ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated")


class LimitExceeded(ValueError):
    """A data set is larger than a configured limit; ``limit`` names which one."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class DatasetLimits:
    """The largest data set the node inflates and the largest image it decodes."""

    max_inflated_bytes: int = 256 * 2**20
    """Largest size of a deflated data set once inflated."""
    max_pixels: int = 64 * 2**20
    """Largest Rows x Columns x NumberOfFrames x SamplesPerPixel."""
    max_pixel_bytes: int = 512 * 2**20
    """Largest decoded pixel data, pixel count x BitsAllocated / 8."""


DEFAULT_LIMITS = DatasetLimits()


def check_inflated_size(deflated: BinaryIO, limit: int) -> int:
    """Inflate a raw deflate stream chunk by chunk, keeping nothing, and return its size.

    Parameters
    ----------
    deflated
        Positioned at the first byte of the deflated data set.
    limit
        Largest inflated size allowed.

    Returns
    -------
    int
        The inflated size in bytes.

    Raises
    ------
    LimitExceeded
        As soon as more than ``limit`` bytes have come out.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    pending = b""
    while True:
        if not pending:
            pending = deflated.read(_CHUNK)
            if not pending:
                break
        out = inflater.decompress(pending, _CHUNK)
        pending = inflater.unconsumed_tail
        total += len(out)
        if total > limit:
            raise LimitExceeded("max_inflated_bytes",
                                f"the deflated data set inflates to more than {limit} bytes")
        if inflater.eof:
            break
    return total


def _deflated_body(stream: BinaryIO) -> bool:
    """Skip preamble and file meta; return whether the body is deflated."""
    read_preamble(stream, force=False)
    meta = _read_file_meta_info(stream)
    return str(meta.get("TransferSyntaxUID", "")) == DeflatedExplicitVRLittleEndian


def check_encoded(source: bytes | Path | BinaryIO,
                  limits: DatasetLimits = DEFAULT_LIMITS) -> None:
    """Check a Part 10 object's inflated size and declared pixels before it is parsed.

    Parameters
    ----------
    source
        The encoded bytes, the path of a stored file, or a seekable binary stream whose
        first byte is the preamble (read from there, not closed).
    limits
        The limits to apply.

    Raises
    ------
    LimitExceeded
        When a limit is exceeded.
    """
    if isinstance(source, bytes | Path):
        with (BytesIO(source) if isinstance(source, bytes) else source.open("rb")) as stream:
            _check_stream(stream, limits)
    else:
        _check_stream(source, limits)


def _check_stream(stream: BinaryIO, limits: DatasetLimits) -> None:
    try:
        deflated = _deflated_body(stream)
    except Exception:
        return  # not Part 10: the parser that follows reports it
    if deflated:
        try:
            check_inflated_size(stream, limits.max_inflated_bytes)
        except zlib.error:
            return  # a corrupt stream: the parser that follows reports it
    stream.seek(0)
    try:
        header = dcmread(stream, stop_before_pixels=True, force=False,
                         specific_tags=list(_SIZE_KEYWORDS))
    except Exception:
        return
    check_pixels(header, limits)


def _count(ds: Dataset, keyword: str, default: int) -> int:
    """A counting attribute's value; ``default`` when absent or unreadable (the parser
    that follows reports an unreadable one)."""
    try:
        value: Any = ds.get(keyword)
        return max(int(value), 1) if value not in (None, "") else default
    except Exception:
        return default


def check_pixels(ds: Dataset, limits: DatasetLimits = DEFAULT_LIMITS) -> None:
    """Check the image size a data set declares, before any pixel is decoded.

    Raises
    ------
    LimitExceeded
        When the pixel count or the decoded size is over its limit.
    """
    if "Rows" not in ds and "Columns" not in ds:
        return
    pixels = (_count(ds, "Rows", 1) * _count(ds, "Columns", 1)
              * _count(ds, "NumberOfFrames", 1) * _count(ds, "SamplesPerPixel", 1))
    if pixels > limits.max_pixels:
        raise LimitExceeded("max_pixels",
                            f"the image declares {pixels} pixels, over {limits.max_pixels}")
    decoded = pixels * _count(ds, "BitsAllocated", 8) // 8
    if decoded > limits.max_pixel_bytes:
        raise LimitExceeded("max_pixel_bytes",
                            f"the image decodes to {decoded} bytes, over "
                            f"{limits.max_pixel_bytes}")
