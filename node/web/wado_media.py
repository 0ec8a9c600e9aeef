"""Media types of DICOMweb retrieve answers: Accept header reading and multipart bodies.

PS3.18 §8.7 names the media types a WADO-RS resource may answer with; for pixel data
(frames and bulk data) each compressed transfer syntax has its own image media type
(Table 8.7.3-5), and ``application/octet-stream`` carries native (uncompressed, little
endian) pixel bytes. :func:`read_accept` reads an Accept header into media ranges in order
of preference; :func:`pixel_media_type` names the media type of a transfer syntax;
:func:`multipart_body` streams parts as ``multipart/related``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

OCTET_STREAM = "application/octet-stream"
DICOM = "application/dicom"
MULTIPART = "multipart/related"

#: Image media type of each compressed transfer syntax whose frames the node serves as
#: stored (PS3.18 Table 8.7.3-5).
PIXEL_MEDIA_TYPES: dict[str, str] = {
    JPEGBaseline8Bit: "image/jpeg",
    JPEGExtended12Bit: "image/jpeg",
    JPEGLossless: "image/jpeg",
    JPEGLosslessSV1: "image/jpeg",
    JPEGLSLossless: "image/jls",
    JPEGLSNearLossless: "image/jls",
    JPEG2000Lossless: "image/jp2",
    JPEG2000: "image/jp2",
    JPEG2000MCLossless: "image/jpx",
    JPEG2000MC: "image/jpx",
    HTJ2KLossless: "image/jphc",
    HTJ2KLosslessRPCL: "image/jphc",
    HTJ2K: "image/jphc",
    RLELossless: "image/dicom-rle",
}
#: The transfer syntax an image media type means when the Accept header names none.
DEFAULT_SYNTAX: dict[str, str] = {
    OCTET_STREAM: ExplicitVRLittleEndian,
    "image/jpeg": JPEGBaseline8Bit,
    "image/jls": JPEGLSLossless,
    "image/jp2": JPEG2000Lossless,
    "image/jpx": JPEG2000MCLossless,
    "image/jphc": HTJ2KLossless,
    "image/dicom-rle": RLELossless,
}
_SPLIT_MEDIA_RANGES = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')
_SPLIT_PARAMETERS = re.compile(r';(?=(?:[^"]*"[^"]*")*[^"]*$)')


@dataclass(frozen=True)
class MediaRange:
    """One media range of an Accept header.

    Attributes
    ----------
    kind
        The media type or range, lower case (``multipart/related``, ``image/*``, ``*/*``).
    parameters
        Its parameters, names lower case, quotes removed (``type``, ``transfer-syntax``).
    quality
        The ``q`` weight, 0 to 1.
    """

    kind: str
    parameters: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0

    @property
    def part_type(self) -> str | None:
        """The ``type`` parameter of a ``multipart/related`` range, lower case."""
        value = self.parameters.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter (``*`` for any), if given."""
        return self.parameters.get("transfer-syntax")

    def matches(self, media_type: str) -> bool:
        """Whether this range allows ``media_type`` (wildcards included)."""
        if self.kind == "*/*":
            return True
        major, _, minor = self.kind.partition("/")
        return self.kind == media_type or (minor == "*" and media_type.startswith(major + "/"))


def read_accept(header: str | None) -> list[MediaRange]:
    """Read an Accept header into media ranges, most preferred first.

    Ranges weighted ``q=0`` are dropped; equal weights keep the header's order. An absent
    or empty header reads as ``*/*``.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for text in _SPLIT_MEDIA_RANGES.split(header):
        kind, *rest = (part.strip() for part in _SPLIT_PARAMETERS.split(text))
        if not kind:
            continue
        parameters: dict[str, str] = {}
        quality = 1.0
        for parameter in rest:
            name, _, value = parameter.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 1.0
            elif name:
                parameters[name] = value
        if quality > 0:
            ranges.append(MediaRange(kind.lower(), parameters, quality))
    return sorted(ranges, key=lambda r: -r.quality)


def pixel_media_type(transfer_syntax: str) -> str:
    """The media type of pixel data in ``transfer_syntax`` (octet-stream when native)."""
    return PIXEL_MEDIA_TYPES.get(transfer_syntax, OCTET_STREAM)


def is_native(transfer_syntax: str) -> bool:
    """Whether pixel data in ``transfer_syntax`` is native (not encapsulated)."""
    return not UID(transfer_syntax).is_encapsulated


@dataclass(frozen=True)
class Part:
    """One part of a multipart body: its content type, location, and its bytes in chunks."""

    content_type: str
    chunks: Iterable[bytes]
    length: int | None = None
    location: str | None = None


def multipart_body(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """Stream ``parts`` as a ``multipart/related`` body (RFC 2387) with ``boundary``."""
    for part in parts:
        head = f"--{boundary}\r\nContent-Type: {part.content_type}\r\n"
        if part.length is not None:
            head += f"Content-Length: {part.length}\r\n"
        if part.location is not None:
            head += f"Content-Location: {part.location}\r\n"
        yield (head + "\r\n").encode("ascii")
        yield from part.chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def multipart_media_type(part_type: str, boundary: str) -> str:
    """The Content-Type of a multipart/related answer whose parts are ``part_type``."""
    return f'{MULTIPART}; type="{part_type}"; boundary={boundary}'


__all__ = [
    "DEFAULT_SYNTAX",
    "DICOM",
    "MULTIPART",
    "MediaRange",
    "OCTET_STREAM",
    "PIXEL_MEDIA_TYPES",
    "Part",
    "is_native",
    "multipart_body",
    "multipart_media_type",
    "pixel_media_type",
    "read_accept",
]
