"""Server-side rendering of stored radiographs to PNG, with the DICOM or a chosen window.

Rendering reuses the drafting pipeline's display step
(:func:`workers.inference.preprocess.load_display_image`: Modality LUT, VOI, MONOCHROME1,
8 bits), so the radiologist sees the image the way the model's preprocessing read it.
A window chosen in the viewer replaces the file's VOI (window centre and width in
modality units). Decoded datasets and rendered PNGs are kept in small LRU caches, so
window/level changes re-render without reading the file again.

The browser's viewer (:mod:`node.web.pixels`) receives each image as prepared full-depth
samples (:class:`PreparedPixels`: its description and its gzip-encoded 16-bit values),
kept in a byte-bounded cache of their own.

Every cache is keyed by the file's identity on disk (:class:`FileKey`: path, size,
modification time and inode), taken with ``os.stat`` on each call: a file changed or
replaced on disk is read again, never served from a cache (an in-place change that keeps
the size and restores the modification time is the exception; behind a signed report the
signed-evidence check, which reads the file's digest on every request, refuses it).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import pydicom
from PIL import Image
from pydicom.dataset import Dataset

from node.storage import InstanceStore
from node.web.pixel_data import describe, modality_frame
from workers.inference.dicom_limits import LimitExceeded, check_encoded
from workers.inference.preprocess import DisplayImage, ImageDecodeError, load_display_image

K = TypeVar("K")
V = TypeVar("V")

#: Bytes of prepared full-depth images (gzip-encoded samples and descriptions) kept.
PREPARED_BYTES = 128 * 2**20
#: gzip level of the prepared samples: fast, and still halves a typical radiograph.
GZIP_LEVEL = 1


class _LRU(Generic[K, V]):
    """A small thread-safe least-recently-used cache bounded by total weight.

    Parameters
    ----------
    capacity
        Total weight kept (entries, or bytes with a byte-counting ``weight``).
    weight
        Weight of one value; 1 by default.
    """

    def __init__(self, capacity: int, weight: Callable[[V], int] | None = None) -> None:
        self.capacity = capacity
        self._weight: Callable[[V], int] = weight or (lambda _value: 1)
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return None
            self._items.move_to_end(key)
            return entry[0]

    def put(self, key: K, value: V) -> None:
        size = self._weight(value)
        if size > self.capacity:
            return
        with self._lock:
            previous = self._items.pop(key, None)
            if previous is not None:
                self._total -= previous[1]
            self._items[key] = (value, size)
            self._total += size
            while self._total > self.capacity:
                _, (_, dropped) = self._items.popitem(last=False)
                self._total -= dropped

    @property
    def weight(self) -> int:
        """Total weight of the values kept."""
        with self._lock:
            return self._total

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass(frozen=True)
class FileKey:
    """A stored file as it is on disk now: a changed or replaced file has another key."""

    path: str
    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class PreparedPixels:
    """An image ready for the browser's viewer.

    Attributes
    ----------
    description_json
        :class:`node.web.pixel_data.ImageDescription` as JSON (UTF-8; no patient identity).
    samples_gzip
        The Modality-LUT values as little-endian unsigned 16-bit samples, row by row,
        gzip-encoded (level :data:`GZIP_LEVEL`).
    rows, columns
        Image size.
    """

    description_json: bytes
    samples_gzip: bytes
    rows: int
    columns: int

    @property
    def nbytes(self) -> int:
        """Memory the payload holds (what bounds the cache)."""
        return len(self.description_json) + len(self.samples_gzip)

    def samples(self) -> bytes:
        """The samples without the gzip encoding."""
        return gzip.decompress(self.samples_gzip)


@dataclass(frozen=True)
class WindowInfo:
    """The default display window of an image and the range a viewer may move it in.

    Attributes
    ----------
    center, width
        Default window in modality units (the file's, or the robust percentile window used
        when it has none); ``None`` when the file uses a VOI LUT sequence.
    low, high
        Range of modality values the stored bits can hold (for the window controls).
    rows, columns
        Image size.
    """

    center: float | None
    width: float | None
    low: float
    high: float
    rows: int
    columns: int


class ImageRenderer:
    """Render stored instances to PNG.

    Parameters
    ----------
    store
        Resolves instance paths.
    dataset_bytes
        Pixel data bytes of the parsed datasets kept.
    png_bytes
        Bytes of rendered PNGs kept.
    prepared_bytes
        Bytes of prepared full-depth images (:meth:`prepared`) kept.
    """

    def __init__(self, store: InstanceStore, *, dataset_bytes: int = 128 * 2**20,
                 png_bytes: int = 64 * 2**20, prepared_bytes: int = PREPARED_BYTES) -> None:
        self.store = store
        self._datasets: _LRU[FileKey, Dataset] = _LRU(dataset_bytes, _pixel_bytes)
        self._pngs: _LRU[tuple[FileKey, float | None, float | None], bytes] = _LRU(
            png_bytes, len)
        self._windows: _LRU[FileKey, WindowInfo] = _LRU(1024)
        self._prepared: _LRU[FileKey, PreparedPixels] = _LRU(
            prepared_bytes, lambda item: item.nbytes)
        self._preparing: dict[FileKey, threading.Lock] = {}
        self._preparing_lock = threading.Lock()

    @property
    def prepared_weight(self) -> int:
        """Bytes held by the cache of prepared images."""
        return self._prepared.weight

    @property
    def prepared_count(self) -> int:
        """Prepared images kept."""
        return len(self._prepared)

    def file_key(self, relative_path: str) -> FileKey:
        """The stored file's identity on disk now.

        Raises
        ------
        FileNotFoundError
            When the file is missing.
        """
        stat = os.stat(self.store.absolute(relative_path))
        return FileKey(relative_path, stat.st_size, stat.st_mtime_ns, stat.st_ino)

    def _dataset(self, relative_path: str, key: FileKey | None = None) -> Dataset:
        key = key or self.file_key(relative_path)
        ds = self._datasets.get(key)
        if ds is None:
            try:
                check_encoded(self.store.absolute(relative_path))
                ds = pydicom.dcmread(self.store.absolute(relative_path))
            except LimitExceeded as exc:
                raise ImageDecodeError("over a size limit", str(exc)) from exc
            except FileNotFoundError:
                raise
            except Exception as exc:
                raise ImageDecodeError("unknown transfer syntax",
                                       f"file could not be parsed: {exc}") from exc
            if self.file_key(relative_path) == key:  # not changed while being read
                self._datasets.put(key, ds)
        return ds

    def dataset(self, relative_path: str) -> Dataset:
        """The parsed dataset of a stored instance (size limits checked first, cached).

        Raises
        ------
        ImageDecodeError
            When the file is over a size limit or cannot be parsed.
        FileNotFoundError
            When the file is missing.
        """
        return self._dataset(relative_path)

    def window(self, relative_path: str) -> WindowInfo:
        """The default window and value range of a stored image.

        Raises
        ------
        ImageDecodeError
            When the image cannot be decoded.
        """
        key = self.file_key(relative_path)
        info = self._windows.get(key)
        if info is None:
            info = self._window_of(key, load_display_image(self._dataset(relative_path, key)))
        return info

    def _window_of(self, key: FileKey, image: DisplayImage) -> WindowInfo:
        """Keep and return the default window of ``image``, the display of ``key``."""
        slope, intercept = image.rescale_slope, image.rescale_intercept
        top = float(2 ** image.bits_stored - 1)
        ends = sorted((intercept, top * slope + intercept))
        rows, columns = image.shape
        info = WindowInfo(image.window_center, image.window_width, ends[0], ends[1],
                          rows, columns)
        self._windows.put(key, info)
        return info

    def prepared(self, relative_path: str) -> PreparedPixels:
        """The image's full-depth samples and description for the browser (cached).

        Decodes the first frame, applies the Modality LUT
        (:func:`node.web.pixel_data.modality_frame`), describes it
        (:func:`node.web.pixel_data.describe`) and gzip-encodes the samples; kept in a
        cache of :class:`PreparedPixels` bounded in bytes and keyed by the file's identity
        on disk. Two callers asking for the same file at once share one decoding.

        Raises
        ------
        ImageDecodeError
            When the image cannot be decoded.
        FileNotFoundError
            When the file is missing.
        """
        key = self.file_key(relative_path)
        item = self._prepared.get(key)
        if item is not None:
            return item
        with self._preparing_lock:
            lock = self._preparing.setdefault(key, threading.Lock())
        try:
            with lock:
                item = self._prepared.get(key)
                if item is not None:
                    return item
                ds = self._dataset(relative_path, key)
                frame = modality_frame(ds)
                description = describe(ds, frame).to_json()
                item = PreparedPixels(
                    json.dumps(description, separators=(",", ":")).encode(),
                    gzip.compress(frame.little_endian_bytes(), compresslevel=GZIP_LEVEL,
                                  mtime=0),
                    frame.rows, frame.columns)
                if self.file_key(relative_path) == key:  # not changed while being read
                    self._prepared.put(key, item)
                return item
        finally:
            with self._preparing_lock:
                self._preparing.pop(key, None)

    def png(self, relative_path: str, center: float | None = None,
            width: float | None = None) -> bytes:
        """PNG of a stored image, with the file's window or the one given.

        Parameters
        ----------
        relative_path
            The instance, relative to the storage root.
        center, width
            Window centre and width in modality units; both or neither. A width below 1
            is raised to 1.

        Raises
        ------
        ImageDecodeError
            When the image cannot be decoded.
        ValueError
            When only one of centre and width is given, or one is not finite.
        """
        if (center is None) != (width is None):
            raise ValueError("give both window centre and width, or neither")
        if center is not None and width is not None:
            if not (math.isfinite(center) and math.isfinite(width)):
                raise ValueError("window centre and width must be finite numbers")
            center, width = round(center, 2), round(max(width, 1.0), 2)
        file = self.file_key(relative_path)
        key = (file, center, width)
        cached = self._pngs.get(key)
        if cached is not None:
            return cached
        ds = self._dataset(relative_path, file)
        source = ds if center is None else _with_window(ds, center, width or 1.0)
        image = load_display_image(source)
        if center is None:  # the default display also gives the default window
            self._window_of(file, image)
        pixels = image.pixels
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=3)
        data = buffer.getvalue()
        self._pngs.put(key, data)
        return data


def _pixel_bytes(ds: Dataset) -> int:
    """Size of a dataset's pixel data (what dominates its memory)."""
    if "PixelData" not in ds:
        return 1
    value = ds["PixelData"].value
    return len(value) if isinstance(value, bytes | bytearray) else 1


def _with_window(ds: Dataset, center: float, width: float) -> Dataset:
    """A copy of ``ds`` (elements shared, not duplicated) whose VOI is the given window."""
    clone = Dataset()
    for element in ds:
        clone.add(element)
    clone.file_meta = ds.file_meta
    for keyword in ("VOILUTSequence", "WindowCenter", "WindowWidth",
                    "WindowCenterWidthExplanation"):
        if keyword in clone:
            delattr(clone, keyword)
    clone.WindowCenter = f"{center:g}"
    clone.WindowWidth = f"{width:g}"
    return clone


__all__ = ["FileKey", "ImageDecodeError", "ImageRenderer", "PreparedPixels", "WindowInfo"]
