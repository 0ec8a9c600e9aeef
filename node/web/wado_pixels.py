"""Frames of a stored image: native pixel bytes or the stored compressed bitstream.

:class:`StoredPixels` reads the frames of a stored instance's Pixel Data. A frame is
served either as *native* bytes (uncompressed, little endian, the layout of Explicit VR
Little Endian, as ``application/octet-stream``) or, when the instance is stored
compressed, as its stored bitstream (``image/jls``, ``image/jpeg``, ``image/jp2``,
``image/dicom-rle``… with the stored transfer syntax). :func:`choose_pixel_form` picks
one of the two from an Accept header.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import HTTPException
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels.utils import pack_bits, pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian

from node.web.wado_media import (
    DEFAULT_SYNTAX,
    MULTIPART,
    OCTET_STREAM,
    PIXEL_MEDIA_TYPES,
    MediaRange,
)
from workers.inference.dicom_limits import DatasetLimits, LimitExceeded, check_pixels

PIXEL_DATA = 0x7FE00010
#: The most frames one request may list.
MAX_FRAMES_LISTED = 10_000


@dataclass(frozen=True)
class PixelForm:
    """How frames are served: their media type and transfer syntax.

    Attributes
    ----------
    media_type
        ``application/octet-stream`` for native bytes, else the stored bitstream's type.
    transfer_syntax
        Explicit VR Little Endian for native bytes, else the stored transfer syntax.
    """

    media_type: str
    transfer_syntax: str

    @property
    def native(self) -> bool:
        """Whether frames are served as native (uncompressed) bytes."""
        return self.media_type == OCTET_STREAM

    @property
    def content_type(self) -> str:
        """The Content-Type of one part."""
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax}"


NATIVE = PixelForm(OCTET_STREAM, ExplicitVRLittleEndian)
#: Media types some clients still send for the registered ones.
_ALIASES = {"image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}


def _form_for(media_range: MediaRange, stored: str) -> PixelForm | None:
    """The form one media range asks for, if the node can serve it for ``stored``."""
    stored_media = PIXEL_MEDIA_TYPES.get(stored)
    if media_range.kind == "*/*":
        return NATIVE
    if not media_range.matches(MULTIPART) and media_range.kind != "multipart/*":
        return None
    part = media_range.part_type or OCTET_STREAM
    part = _ALIASES.get(part, part)
    wanted = media_range.transfer_syntax
    if part == "*/*":  # any type: native bytes, unless a transfer syntax is named
        part = OCTET_STREAM if wanted in (None, "*") or stored_media is None else stored_media
        wanted = None if wanted == "*" else wanted
    elif part == "image/*" and stored_media is not None:
        part = stored_media
    if part == OCTET_STREAM:
        if wanted in (None, ExplicitVRLittleEndian):
            return NATIVE
        if wanted == "*":
            return PixelForm(stored_media, stored) if stored_media else NATIVE
        return NATIVE if wanted == stored and stored_media is None else None
    if stored_media is None or part != stored_media:
        return None
    if wanted in ("*", stored) or (wanted is None and DEFAULT_SYNTAX.get(part) == stored):
        return PixelForm(stored_media, stored)
    return None


def choose_pixel_form(ranges: Sequence[MediaRange], stored: str) -> PixelForm:
    """The most preferred form of the Accept header the node can serve.

    ``multipart/related; type="application/octet-stream"`` (the default) serves native
    bytes; with ``transfer-syntax=*`` it serves a compressed instance's stored bitstream
    under its own media type (PS3.18 Table 8.7.3-5). An image media type is served when
    the instance is stored in that type's transfer syntax (the one named, or the type's
    default). Nothing is compressed on the fly.

    Raises
    ------
    fastapi.HTTPException
        406 when no range can be served.
    """
    for media_range in ranges:
        form = _form_for(media_range, stored)
        if form is not None:
            return form
    media = PIXEL_MEDIA_TYPES.get(stored)
    also = f' or type="{media}"; transfer-syntax={stored}' if media else ""
    raise HTTPException(406, 'pixel data is served as multipart/related; '
                             f'type="application/octet-stream"{also}')


def parse_frame_list(text: str) -> list[int]:
    """The 1-based frame numbers of a comma-separated list; 400 when malformed."""
    items = text.split(",")
    if len(items) > MAX_FRAMES_LISTED:
        raise HTTPException(400, f"at most {MAX_FRAMES_LISTED} frames per request")
    numbers = []
    for item in items:
        item = item.strip()
        if not (item.isascii() and item.isdigit()) or len(item) > 9 or int(item) < 1:
            raise HTTPException(400, "frame numbers are positive whole numbers, "
                                     "separated by commas")
        numbers.append(int(item))
    return numbers


class StoredPixels:
    """The frames of a stored instance's Pixel Data.

    Parameters
    ----------
    dataset
        The stored instance, read with its file meta after the file's size limits were
        checked; its Pixel Data may be deferred (read with ``defer_size``: native Pixel
        Data of a defined length), and is then read frame by frame from ``path``.
    limits
        Checked against the declared image size before any frame is decoded.
    path
        The stored file, for a deferred Pixel Data element.

    Raises
    ------
    LookupError
        When the instance has no Pixel Data.
    LimitExceeded
        When the declared image is over the limits.
    """

    def __init__(self, dataset: Dataset, limits: DatasetLimits,
                 path: Path | None = None) -> None:
        if "PixelData" not in dataset:
            raise LookupError("no Pixel Data")
        check_pixels(dataset, limits)
        raw = dataset.get_item(PIXEL_DATA, keep_deferred=True)
        self._deferred: tuple[Path, int, int] | None = None
        if (isinstance(raw, RawDataElement) and raw.value is None and raw.length
                and path is not None):
            self._deferred = (path, raw.value_tell, raw.length)
        self.dataset = dataset
        self.limits = limits
        self.syntax = UID(dataset.file_meta.TransferSyntaxUID)
        self.frames = max(int(dataset.get("NumberOfFrames") or 1), 1)
        bits = int(dataset.BitsAllocated)
        self.samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        self.pixels_per_frame = int(dataset.Rows) * int(dataset.Columns) * self.samples
        self.bits = bits
        self.frame_bytes = (self.pixels_per_frame * bits + 7) // 8

    def check_numbers(self, numbers: Sequence[int]) -> None:
        """404 for a frame past the last; 413 when the frames asked for are too large."""
        beyond = [n for n in numbers if n > self.frames]
        if beyond:
            raise HTTPException(404, f"the instance has {self.frames} frame(s)")
        total = self.frame_bytes * len(numbers)
        if total > self.limits.max_pixel_bytes:
            raise LimitExceeded("max_pixel_bytes",
                                f"the frames asked for decode to {total} bytes")

    def stored(self, number: int) -> bytes:
        """Frame ``number`` (1-based) as stored: its bitstream, or its native bytes."""
        if self.syntax.is_encapsulated:
            if self._deferred is not None:
                path, start, _ = self._deferred
                with path.open("rb") as stream:
                    stream.seek(start)
                    return get_frame(stream, number - 1, number_of_frames=self.frames)
            return get_frame(self.dataset.PixelData, number - 1, number_of_frames=self.frames)
        return self.native(number)

    def native(self, number: int) -> bytes:
        """Frame ``number`` (1-based) as native little-endian bytes (decoded if need be).

        Colour frames stored as YCbCr JPEG are decoded to RGB, pixel-interleaved.
        """
        syntax = self.syntax
        if not syntax.is_encapsulated and syntax.is_little_endian and self.bits % 8 == 0:
            start = (number - 1) * self.frame_bytes
            if self._deferred is not None:
                path, value_start, length = self._deferred
                if start + self.frame_bytes > length:
                    raise ValueError("Pixel Data is shorter than the image it declares")
                with path.open("rb") as stream:
                    stream.seek(value_start + start)
                    data = stream.read(self.frame_bytes)
            else:
                data = bytes(self.dataset.PixelData[start:start + self.frame_bytes])
            if len(data) != self.frame_bytes:
                raise ValueError("Pixel Data is shorter than the image it declares")
            return data
        if syntax.is_encapsulated:  # decode this frame alone
            array = pixel_array(self.single_frame(number), index=0)
        else:
            array = pixel_array(self.dataset, index=number - 1)
        if self.bits == 1:
            return pack_bits(array.ravel())
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()

    def frame(self, number: int, form: PixelForm) -> bytes:
        """Frame ``number`` in ``form``."""
        return self.native(number) if form.native else self.stored(number)

    def single_frame(self, number: int) -> Dataset:
        """A copy of the instance (elements shared) holding only frame ``number``, in its
        stored transfer syntax, for rendering."""
        clone = Dataset()
        for tag in sorted(self.dataset.keys()):  # a deferred Pixel Data stays unread
            if tag != PIXEL_DATA:
                clone.add(self.dataset[tag])
        clone.file_meta = copy.deepcopy(self.dataset.file_meta)  # its elements change
        if not self.syntax.is_encapsulated:  # native bytes are little endian
            clone.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        stored = self.stored(number)
        clone.PixelData = encapsulate([stored]) if self.syntax.is_encapsulated else stored
        clone["PixelData"].VR = "OB" if self.syntax.is_encapsulated or self.bits <= 8 else "OW"
        clone.NumberOfFrames = 1
        return clone


__all__ = [
    "MAX_FRAMES_LISTED",
    "NATIVE",
    "PixelForm",
    "StoredPixels",
    "choose_pixel_form",
    "parse_frame_list",
]
