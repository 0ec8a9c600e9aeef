"""Check that an encoded instance is structurally whole, without decoding values.

pydicom reads leniently: a value cut short by the end of the stream, or an
element header cut in half, is accepted without a word, so a truncated or
garbled transfer would be stored as if it were complete. Here the received
bytes are walked element by element (sequences, items and encapsulated
fragments included) and every declared length is checked against the bytes
that are really there.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_TRANSFER_SYNTAX_TAG = 0x00020010
_PIXEL_DATA_TAG = 0x7FE00010
_PREAMBLE = 128
_MAX_DEPTH = 32

#: Explicit VRs whose header has two reserved bytes and a 32-bit length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)


class StructureError(ValueError):
    """The encoded instance is truncated or its declared lengths do not fit."""


@dataclass(frozen=True)
class PixelDataSpan:
    """Where the top-level Pixel Data element of an encoded instance lies.

    Offsets count from the first byte of the encoded instance (the preamble).
    """

    element_offset: int
    """The first byte of the element's tag."""
    value_offset: int
    """The first byte of its value."""
    end_offset: int
    """The first byte after the element (after its sequence delimiter, if any)."""
    length: int | None
    """The value's length; ``None`` for encapsulated (undefined length) pixel data."""
    vr: str | None
    """Its VR as encoded (explicit VR) or as the dictionary has it (implicit VR)."""
    fragments: int | None
    """How many items an encapsulated value holds, the basic offset table included;
    ``None`` unless the value is encapsulated (undefined length, walked as fragments)."""


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walker:
    """Walk the elements of one encoded dataset, which starts at ``origin`` in ``data``
    (messages count bytes from there)."""

    def __init__(self, data: bytes | memoryview, *, little_endian: bool,
                 origin: int = 0) -> None:
        self.data = data
        self.order = "<" if little_endian else ">"
        self.origin = origin
        self.pixel_data: PixelDataSpan | None = None
        """The top-level Pixel Data element, once walked (offsets within ``data``)."""
        self._fragments: int | None = None

    def _unpack(self, fmt: str, pos: int, end: int) -> tuple[int, ...]:
        if pos + struct.calcsize(fmt) > end:
            raise StructureError(f"element header cut short at byte {pos - self.origin}")
        return struct.unpack_from(self.order + fmt, self.data, pos)

    def tag_at(self, pos: int, end: int) -> int:
        group, element = self._unpack("HH", pos, end)
        return group << 16 | element

    def header_at(
        self, pos: int, end: int, tag: int, implicit: bool
    ) -> tuple[int, str | None, int]:
        """Return the value offset, the VR (``None`` when unknown) and the length."""
        if not implicit:
            raw_vr = self.data[pos + 4 : pos + 6]
            if len(raw_vr) == 2 and all(0x41 <= b <= 0x5A for b in raw_vr):
                vr = str(raw_vr, "ascii")
                if vr in _LONG_VRS:
                    (length,) = self._unpack("I", pos + 8, end)
                    return pos + 12, vr, length
                (length,) = self._unpack("H", pos + 6, end)
                return pos + 8, vr, length
            # Not a VR: read this element as implicit VR, as pydicom does.
        (length,) = self._unpack("I", pos + 4, end)
        try:
            known: str | None = dictionary_VR(tag)
        except KeyError:
            known = None
        return pos + 8, known, length

    def dataset(self, pos: int, end: int, *, implicit: bool, depth: int, delimited: bool) -> int:
        """Walk elements from ``pos`` up to ``end`` or, if ``delimited``, an item delimiter.

        Returns
        -------
        int
            The offset just after the dataset (after its delimiter, if any).
        """
        if depth > _MAX_DEPTH:
            raise StructureError("sequences nested too deeply")
        while True:
            if pos >= end:
                if delimited:
                    raise StructureError("item delimiter missing")
                return pos
            tag = self.tag_at(pos, end)
            if tag == _ITEM_END and delimited:
                return pos + 8
            if tag >> 16 == 0xFFFE:
                raise StructureError(
                    f"unexpected delimiter {_name(tag)} at byte {pos - self.origin}")
            element_at = pos
            pos, vr, length = self.header_at(pos, end, tag, implicit)
            value_at = pos
            if length == _UNDEFINED:
                self._fragments = None
                pos = self._undefined_length_value(pos, end, tag, vr, implicit, depth)
            else:
                if pos + length > end:
                    raise StructureError(
                        f"element {_name(tag)} declares {length} bytes but {end - pos} remain"
                    )
                if vr == "SQ":
                    self.items(pos, pos + length, implicit=implicit, depth=depth + 1,
                               delimited=False)
                pos += length
            if tag == _PIXEL_DATA_TAG and depth == 0:
                self.pixel_data = PixelDataSpan(
                    element_at, value_at, pos, None if length == _UNDEFINED else length, vr,
                    self._fragments if length == _UNDEFINED else None)

    def _undefined_length_value(
        self, pos: int, end: int, tag: int, vr: str | None, implicit: bool, depth: int
    ) -> int:
        if vr in ("OB", "OW") and not implicit:
            return self.fragments(pos, end)
        if vr == "UN":  # PS3.5 6.2.2: a sequence encoded in implicit VR
            return self.items(pos, end, implicit=True, depth=depth + 1, delimited=True)
        if vr == "SQ" or (implicit and vr is None):
            return self.items(pos, end, implicit=implicit, depth=depth + 1, delimited=True)
        raise StructureError(f"element {_name(tag)} has an undefined length")

    def items(self, pos: int, end: int, *, implicit: bool, depth: int, delimited: bool) -> int:
        """Walk the items of a sequence value; return the offset after it."""
        while True:
            if pos >= end:
                if delimited:
                    raise StructureError("sequence delimiter missing")
                return pos
            tag = self.tag_at(pos, end)
            (length,) = self._unpack("I", pos + 4, end)
            pos += 8
            if tag == _SEQUENCE_END and delimited:
                return pos
            if tag != _ITEM:
                raise StructureError(f"expected a sequence item, found {_name(tag)}")
            if length == _UNDEFINED:
                pos = self.dataset(pos, end, implicit=implicit, depth=depth, delimited=True)
                continue
            if pos + length > end:
                raise StructureError(f"item declares {length} bytes but {end - pos} remain")
            self.dataset(pos, pos + length, implicit=implicit, depth=depth, delimited=False)
            pos += length

    def fragments(self, pos: int, end: int) -> int:
        """Walk encapsulated pixel data items; return the offset after the delimiter."""
        self._fragments = 0
        while True:
            tag = self.tag_at(pos, end)
            (length,) = self._unpack("I", pos + 4, end)
            pos += 8
            if tag == _SEQUENCE_END:
                return pos
            if tag != _ITEM or length == _UNDEFINED:
                raise StructureError(f"malformed pixel data fragment {_name(tag)}")
            if pos + length > end:
                raise StructureError(f"fragment declares {length} bytes but {end - pos} remain")
            pos += length
            self._fragments = (self._fragments or 0) + 1


def check_part10(encoded: bytes | memoryview) -> PixelDataSpan | None:
    """Check that a Part 10 stream (preamble, file meta, dataset) is structurally whole.

    Parameters
    ----------
    encoded
        The instance as it will be stored (bytes or a buffer: nothing is copied but a
        deflated data set, which is inflated).

    Returns
    -------
    PixelDataSpan or None
        Where the data set's top-level Pixel Data element lies in ``encoded``; ``None``
        when it has none, or when the data set is deflated (its offsets would be those
        of the inflated copy).

    Raises
    ------
    StructureError
        If the stream is not Part 10, an element or item runs past the data
        that holds it, a header is cut short, or a delimiter is missing.
    """
    if encoded[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
        raise StructureError("no DICM prefix")
    meta = _Walker(encoded, little_endian=True)
    pos, end = _PREAMBLE + 4, len(encoded)
    syntax: str | None = None
    while pos < end and meta.tag_at(pos, end) >> 16 == 0x0002:
        tag = meta.tag_at(pos, end)
        value_at, _, length = meta.header_at(pos, end, tag, implicit=False)
        if length == _UNDEFINED or value_at + length > end:
            raise StructureError(f"file meta element {_name(tag)} runs past the data")
        if tag == _TRANSFER_SYNTAX_TAG:
            syntax = bytes(encoded[value_at : value_at + length]).rstrip(b"\x00 ").decode(
                "ascii")
        pos = value_at + length
    if syntax is None:
        raise StructureError("file meta has no transfer syntax")
    transfer_syntax = UID(syntax)
    if transfer_syntax.is_deflated:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflated = inflater.decompress(memoryview(encoded)[pos:]) + inflater.flush()
        except zlib.error as exc:
            raise StructureError(f"deflated dataset does not inflate: {exc}") from exc
        if not inflater.eof:
            raise StructureError("deflated dataset is cut short")
        _Walker(inflated, little_endian=transfer_syntax.is_little_endian).dataset(
            0, len(inflated), implicit=transfer_syntax.is_implicit_VR, depth=0,
            delimited=False)
        return None
    # The data set is walked where it lies (slicing bytes would copy them).
    walker = _Walker(encoded, little_endian=transfer_syntax.is_little_endian, origin=pos)
    walker.dataset(
        pos, len(encoded), implicit=transfer_syntax.is_implicit_VR, depth=0, delimited=False
    )
    return walker.pixel_data
