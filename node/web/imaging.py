"""Server-side rendering of stored radiographs to PNG, with the DICOM or a chosen window.

Rendering reuses the drafting pipeline's display step
(:func:`workers.inference.preprocess.load_display_image`: Modality LUT, VOI, MONOCHROME1,
8 bits), so the radiologist sees the image the way the model's preprocessing read it.
A window chosen in the viewer replaces the file's VOI (window centre and width in
modality units). Decoded datasets and rendered PNGs are kept in small LRU caches, so
window/level changes re-render without reading the file again.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import pydicom
from PIL import Image
from pydicom.dataset import Dataset

from node.storage import InstanceStore
from workers.inference.dicom_limits import LimitExceeded, check_encoded
from workers.inference.preprocess import ImageDecodeError, load_display_image

K = TypeVar("K")
V = TypeVar("V")


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
    """

    def __init__(self, store: InstanceStore, *, dataset_bytes: int = 128 * 2**20,
                 png_bytes: int = 64 * 2**20) -> None:
        self.store = store
        self._datasets: _LRU[str, Dataset] = _LRU(dataset_bytes, _pixel_bytes)
        self._pngs: _LRU[tuple[str, float | None, float | None], bytes] = _LRU(png_bytes, len)
        self._windows: _LRU[str, WindowInfo] = _LRU(1024)

    def _dataset(self, relative_path: str) -> Dataset:
        ds = self._datasets.get(relative_path)
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
            self._datasets.put(relative_path, ds)
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
        info = self._windows.get(relative_path)
        if info is None:
            ds = self._dataset(relative_path)
            image = load_display_image(ds)
            slope, intercept = image.rescale_slope, image.rescale_intercept
            top = float(2 ** image.bits_stored - 1)
            ends = sorted((intercept, top * slope + intercept))
            rows, columns = image.shape
            info = WindowInfo(image.window_center, image.window_width, ends[0], ends[1],
                              rows, columns)
            self._windows.put(relative_path, info)
        return info

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
        key = (relative_path, center, width)
        cached = self._pngs.get(key)
        if cached is not None:
            return cached
        ds = self._dataset(relative_path)
        source = ds if center is None else _with_window(ds, center, width or 1.0)
        pixels = load_display_image(source).pixels
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


__all__ = ["ImageDecodeError", "ImageRenderer", "WindowInfo"]
