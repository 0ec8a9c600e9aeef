"""WADO-RS metadata with bulk data references, and the bulk data resource they point to.

Metadata (``application/dicom+json``) carries a ``BulkDataURI`` instead of the value for
Pixel Data and for every binary value (OB, OD, OF, OL, OV, OW, UN) longer than
:data:`BULK_DATA_THRESHOLD` bytes, at any depth. The URI is the instance's retrieve URL
followed by ``/bulkdata/`` and the element's path: its tag, or for an element inside a
sequence the sequence's tag, the item's index (from 0) and so on, e.g.
``…/instances/{uid}/bulkdata/7FE00010`` or ``…/bulkdata/00540016/0/00181078``.

Reading metadata never reads a bulk value: the file is parsed with values over the
threshold deferred (their length is known, their bytes stay on disk), except for a
deflated file, which is inflated whole once its inflated size passed the limits.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

#: Binary values longer than this (bytes) are given as a BulkDataURI, not inline.
BULK_DATA_THRESHOLD = 1024
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PIXEL_DATA = 0x7FE00010
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")


@dataclass(frozen=True)
class BulkElement:
    """A value left out of metadata: where it sits and its VR."""

    path: tuple[int | str, ...]
    """Tags and item indexes, alternating, ending with the element's tag."""
    vr: str

    @property
    def uri_path(self) -> str:
        """The path as it appears after ``/bulkdata/``."""
        return "/".join(f"{p:08X}" if isinstance(p, int) else p for p in self.path)


def _vr_of(raw: RawDataElement | DataElement, dataset: Dataset) -> str:
    vr = raw.VR
    if not vr:
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            vr = "UN"
    if " or " in vr:  # OB or OW, US or SS: as the image's bit depth says
        wide = int(dataset.get("BitsAllocated", 16) or 16) > 8
        vr = "OW" if "OW" in vr and wide else vr.split(" or ")[0]
    return vr


def _collect(dataset: Dataset, prefix: tuple[int | str, ...],
             found: list[BulkElement]) -> None:
    """Remove the bulk values of ``dataset`` (at any depth) and record where they were."""
    for tag in list(dataset.keys()):
        raw = dataset.get_item(tag, keep_deferred=True)
        if raw is None:
            continue
        path = (*prefix, int(tag))
        deferred = isinstance(raw, RawDataElement) and raw.value is None and raw.length != 0
        if deferred:
            vr = _vr_of(raw, dataset)
            if vr in BINARY_VRS or int(tag) == PIXEL_DATA:
                found.append(BulkElement(path, vr))
                del dataset[tag]
                continue
        element = dataset[tag]
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                _collect(item, (*path, str(index)), found)
        elif element.VR in BINARY_VRS and (int(tag) == PIXEL_DATA or len(
                element.value or b"") > BULK_DATA_THRESHOLD):
            found.append(BulkElement(path, _vr_of(element, dataset)))
            del dataset[tag]


def _place(target: dict[str, Any], element: BulkElement, base_uri: str) -> None:
    *parents, last = element.path
    node = target
    for position in range(0, len(parents), 2):
        tag, index = parents[position], parents[position + 1]
        node = node[f"{tag:08X}"]["Value"][int(index)]
    node[f"{last:08X}"] = {"vr": element.vr,
                           "BulkDataURI": f"{base_uri}/bulkdata/{element.uri_path}"}


def read_metadata(path: Any, transfer_syntax: str) -> tuple[Dataset, list[BulkElement]]:
    """Read a stored file for metadata, its bulk values left on disk.

    Parameters
    ----------
    path
        The stored file (its size limits already checked).
    transfer_syntax
        Its transfer syntax (a deflated file is read whole).

    Returns
    -------
    (Dataset, list of BulkElement)
        The data set without its bulk values, and where they were.
    """
    defer = None if UID(transfer_syntax).is_deflated else BULK_DATA_THRESHOLD
    dataset = dcmread(path, defer_size=defer)
    found: list[BulkElement] = []
    _collect(dataset, (), found)
    return dataset, found


def metadata_json(dataset: Dataset, bulk: list[BulkElement], base_uri: str) -> dict[str, Any]:
    """The DICOM JSON object of ``dataset`` with a BulkDataURI for each bulk value.

    Parameters
    ----------
    dataset, bulk
        As :func:`read_metadata` returns them.
    base_uri
        The instance's retrieve URL.
    """
    result: dict[str, Any] = dataset.to_json_dict()
    for element in bulk:
        _place(result, element, base_uri)
    return result


def parse_bulk_path(text: str) -> tuple[int | str, ...]:
    """The path of a bulk data URI (tags and item indexes); 400 when malformed."""
    segments = [s for s in text.split("/") if s]
    if not segments or len(segments) % 2 == 0 or len(segments) > 33:
        raise HTTPException(400, "a bulk data path is a tag, or sequence tag / item / tag")
    path: list[int | str] = []
    for position, segment in enumerate(segments):
        if position % 2 == 0:
            if not _TAG.match(segment):
                raise HTTPException(400, "bulk data path: a tag is 8 hexadecimal digits")
            path.append(int(segment, 16))
        else:
            if not (segment.isascii() and segment.isdigit()) or len(segment) > 6:
                raise HTTPException(400, "bulk data path: an item index is a whole number")
            path.append(segment)
    return tuple(path)


def find_element(dataset: Dataset, path: tuple[int | str, ...]) -> DataElement:
    """The element at ``path`` in ``dataset``; 404 when there is none (or it is not bulk)."""
    node = dataset
    *parents, last = path
    try:
        for position in range(0, len(parents), 2):
            sequence = node[int(parents[position])]
            if sequence.VR != "SQ":
                raise KeyError(parents[position])
            node = sequence.value[int(parents[position + 1])]
        element = node[int(last)]
    except (KeyError, IndexError):
        raise HTTPException(404, "no such bulk data element") from None
    if element.VR not in BINARY_VRS:
        raise HTTPException(404, "no such bulk data element")
    return element


def chunks(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    """``data`` in pieces of ``size`` bytes."""
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start:start + size])


__all__ = [
    "BINARY_VRS",
    "BULK_DATA_THRESHOLD",
    "BulkElement",
    "PIXEL_DATA",
    "chunks",
    "find_element",
    "metadata_json",
    "parse_bulk_path",
    "read_metadata",
]
