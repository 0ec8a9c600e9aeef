"""Received instances as read-only buffers: a spooled file mapped, never copied.

A large instance is checked, parsed and hashed straight from the pages of its spooled
file: :func:`mapped_file` maps it read-only and :class:`BufferReader` lets pydicom read
from the map (copying only the values it reads) where :class:`io.BytesIO` would first
copy the whole buffer.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, TypeAlias, cast

logger = logging.getLogger(__name__)

#: An encoded instance: bytes, or a read-only view of a mapped file.
EncodedBuffer: TypeAlias = bytes | memoryview

#: Values and buffers up to this size are cheaper to copy than to read around.
COPY_MAX_BYTES = 1 << 20


@contextlib.contextmanager
def mapped_file(path: Path) -> Iterator[memoryview]:
    """Map ``path`` read-only for the duration of the ``with`` block.

    The file descriptor is closed at once (the map keeps the pages reachable); the
    view is released and the map closed when the block ends, whatever happened in it.

    Yields
    ------
    memoryview
        The file's bytes (an empty view for an empty file, which cannot be mapped).

    Raises
    ------
    OSError
        If the file cannot be opened or mapped.
    """
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            mapping = None
        else:
            mapping = mmap.mmap(file.fileno(), size, flags=mmap.MAP_SHARED,
                                prot=mmap.PROT_READ)
    if mapping is None:
        yield memoryview(b"")
        return
    view = memoryview(mapping)
    try:
        yield view
    finally:
        view.release()
        try:
            mapping.close()
        except BufferError:
            # A view of the map is still held somewhere: the map is unmapped when the
            # last one goes. The file is immutable once received, so nothing is at risk.
            logger.warning("mapped_instance_still_referenced")


class BufferReader:
    """A read-only, seekable binary stream over a buffer, copying only what is read.

    Parameters
    ----------
    buffer
        The bytes to read (a memoryview of a mapped file, or bytes).
    """

    def __init__(self, buffer: EncodedBuffer) -> None:
        self._view = memoryview(buffer)
        self._size = len(self._view)
        self._position = 0

    def read(self, size: int | None = -1) -> bytes:
        """Return up to ``size`` bytes (all that remain when negative) and move past them."""
        start = self._position
        end = self._size if size is None or size < 0 else min(start + size, self._size)
        if end <= start:
            return b""
        self._position = end
        return self._view[start:end].tobytes()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move to ``offset`` from the start, the current position or the end."""
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        position = base + offset
        if position < 0:
            raise ValueError("negative seek position")
        self._position = position
        return position

    def tell(self) -> int:
        """The current position."""
        return self._position

    def readable(self) -> bool:
        """Always ``True``."""
        return True

    def seekable(self) -> bool:
        """Always ``True``."""
        return True

    def close(self) -> None:
        """Release the view (the buffer itself belongs to the caller)."""
        self._view.release()


def binary_stream(buffer: EncodedBuffer) -> BinaryIO:
    """A seekable binary stream over ``buffer``: a :class:`io.BytesIO` (faster to read)
    where that copies nothing or little, a :class:`BufferReader` over a larger view."""
    if isinstance(buffer, bytes) or len(buffer) <= COPY_MAX_BYTES:
        return BytesIO(buffer)
    return cast(BinaryIO, BufferReader(buffer))
