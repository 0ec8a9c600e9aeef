"""Transfer syntaxes of retrieved instances: which one to send, and converting to it.

A WADO-RS instance retrieve names the transfer syntax it wants in the Accept header
(``multipart/related; type="application/dicom"; transfer-syntax=…``, or single-part
``application/dicom; transfer-syntax=…``). :func:`choose_syntax` picks, for one stored
instance, the most preferred syntax the node can produce; :func:`transcode` converts a
data set into it:

* the stored syntax (``transfer-syntax=*``, no parameter, or the stored one named):
  the file as stored, byte for byte;
* Explicit VR Little Endian, Implicit VR Little Endian or Deflated Explicit VR Little
  Endian: always (a compressed image is decoded with pydicom's decoders; a big endian
  one's Pixel Data is converted, unless it holds other word-sized binary values: 406);
* the lossless syntaxes the node encodes (JPEG-LS Lossless, JPEG 2000 Lossless, RLE
  Lossless, :data:`node.dicom.retrieve_transfer.LOSSLESS_ENCODABLE`): decoded if need be,
  then encoded;
* anything else (lossy syntaxes other than the stored one, big endian): not offered, so
  the request answers 406.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pack_bits, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from node.dicom.qr_keys import StoredObject
from node.dicom.retrieve_transfer import LOSSLESS_ENCODABLE, fit_to_syntaxes
from node.web.wado_media import DICOM, MULTIPART, MediaRange
from node.web.wado_source import InstanceSource, unreadable

PIXEL_DATA = 0x7FE00010
#: Syntaxes any stored instance can be converted to (decoded if compressed).
NATIVE_TARGETS: frozenset[str] = frozenset({
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})


@dataclass(frozen=True)
class DicomForm:
    """How one instance is sent: its transfer syntax, and whether as a bare Part 10 file."""

    transfer_syntax: str
    as_stored: bool
    single_part: bool = False


def can_produce(stored: str, target: str) -> bool:
    """Whether an instance stored in ``stored`` can be sent in ``target``."""
    return target == stored or target in NATIVE_TARGETS or target in LOSSLESS_ENCODABLE


def _form_for(media_range: MediaRange, stored: str, single_allowed: bool) -> DicomForm | None:
    if media_range.kind == "*/*":
        return DicomForm(stored, True)
    single = media_range.kind == DICOM
    if single and not single_allowed:
        return None
    if not single:
        if not (media_range.matches(MULTIPART) or media_range.kind == "multipart/*"):
            return None
        if media_range.part_type not in (None, DICOM):
            return None
    wanted = media_range.transfer_syntax
    if wanted in (None, "*", stored):
        return DicomForm(stored, True, single)
    if can_produce(stored, wanted):
        return DicomForm(wanted, False, single)
    return None


def choose_syntax(ranges: Sequence[MediaRange], stored: str, *,
                  single_allowed: bool) -> DicomForm | None:
    """The most preferred form of the Accept header the node can send an instance in.

    Parameters
    ----------
    ranges
        The Accept header, read.
    stored
        The instance's stored transfer syntax.
    single_allowed
        Whether single-part ``application/dicom`` may be chosen (a request for one
        instance).

    Returns
    -------
    DicomForm or None
        ``None`` when no range can be served.
    """
    for media_range in ranges:
        form = _form_for(media_range, stored, single_allowed)
        if form is not None:
            return form
    return None


def transcode(dataset: Dataset, target: str) -> Dataset | None:
    """Convert ``dataset`` (read with its file meta and pixels) to ``target`` in place.

    Returns
    -------
    Dataset or None
        The data set, now labelled and encoded as ``target``; ``None`` when the node
        cannot produce ``target`` from it.

    Raises
    ------
    Exception
        Whatever the pixel decoder or encoder raises on a damaged or unsuitable image.
    """
    stored = UID(dataset.file_meta.TransferSyntaxUID)
    if target == stored:
        return dataset
    if not stored.is_little_endian:
        if not _to_little_endian(dataset):
            return None
        if target == ExplicitVRLittleEndian:
            return dataset
    if target in NATIVE_TARGETS:
        if stored.is_encapsulated and "PixelData" in dataset:
            dataset.decompress(generate_instance_uid=False)
        dataset.file_meta.TransferSyntaxUID = UID(target)
        return dataset
    return fit_to_syntaxes(dataset, [UID(target)])


def instance_bytes(source: InstanceSource, item: StoredObject, form: DicomForm) -> bytes:
    """A stored instance as a Part 10 file in ``form``'s transfer syntax.

    Raises
    ------
    fastapi.HTTPException
        406 when the image cannot be encoded in that syntax, 413 over a size limit, 422
        when it cannot be read or decoded.
    """
    if form.as_stored:
        return source.store.absolute(item.path).read_bytes()
    dataset = source.dataset(item)
    try:
        converted = transcode(dataset, form.transfer_syntax)
    except Exception as exc:
        unreadable(item, exc)
    if converted is None:
        raise HTTPException(406, "the instance cannot be sent in that transfer syntax")
    return part10_bytes(converted)


def _to_little_endian(dataset: Dataset) -> bool:
    """Relabel a big endian data set Explicit VR Little Endian, its Pixel Data decoded to
    little endian bytes; ``False`` (nothing changed) when it holds other word-sized binary
    values, whose bytes would have to be swapped one by one."""
    others = [e for e in dataset.iterall() if e.tag != PIXEL_DATA
              and e.VR in ("OW", "OF", "OD", "OL", "OV")]
    if others:
        return False
    if "PixelData" in dataset:
        pixels = pixel_array(dataset)
        if int(dataset.BitsAllocated) == 1:
            dataset.PixelData = pack_bits(pixels.ravel())
        else:
            dataset.PixelData = np.ascontiguousarray(
                pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()
            dataset["PixelData"].VR = "OW" if int(dataset.BitsAllocated) > 8 else "OB"
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return True


def part10_bytes(dataset: Dataset) -> bytes:
    """The data set as a Part 10 file in its file meta's transfer syntax."""
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


__all__ = ["DicomForm", "NATIVE_TARGETS", "can_produce", "choose_syntax", "instance_bytes",
           "part10_bytes",
           "transcode"]
