"""A deterministic generator of malformed instances for C-STORE.

Every instance starts from a small, valid chest radiograph (16 x 16 pixels)
encoded in Explicit or Implicit VR Little Endian, and is then broken in one
named way: a cut inside an element, a wrong or huge declared length, a bad
VR, an undefined length where none is allowed, a stray delimiter, a SOP class
that does not match the content, pixel data that does not match its header,
missing or invalid UIDs, garbage bytes, or a broken deflate stream.

Each break lands strictly inside the encoding (never on an element boundary)
or contradicts the header, so no instance here is a valid dataset: the node
must refuse every one of them.
"""

from __future__ import annotations

import enum
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from node.dicom.statuses import StoreStatus
from tests.dicom_factory import CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, make_cxr_dataset
from tests.integration.dicom_files import part10

CANNOT_UNDERSTAND = int(StoreStatus.CANNOT_UNDERSTAND)
DOES_NOT_MATCH = int(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS)

#: SOP classes a hostile sender proposes (the request SOP class is always one of these).
REQUEST_SOP_CLASSES = (DX_FOR_PRESENTATION, CR_IMAGE_STORAGE)

#: Storage SOP classes whose content is not a DX or CR image.
OTHER_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
)

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_INVALID_UIDS = ("", "1.2.abc", "1.2.-3", "1..2", "../../etc", "1." + "2" * 70, "1.2.3.")
_DELIMITERS = (
    struct.pack("<HHI", 0xFFFE, 0xE00D, 0),  # item delimitation
    struct.pack("<HHI", 0xFFFE, 0xE0DD, 0),  # sequence delimitation
    struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF),  # an item outside any sequence
)


class Defect(enum.Enum):
    """The ways in which a generated instance is broken."""

    TRUNCATED = "truncated inside an element"
    WRONG_LENGTH = "element length off by a few bytes"
    BAD_VR = "invalid or header-changing VR"
    HUGE_LENGTH = "declared length far beyond the data"
    UNDEFINED_LENGTH = "undefined length where none is allowed"
    STRAY_DELIMITER = "delimiter or item outside a sequence"
    WRONG_SOP_CLASS = "SOP class of the content differs from the request"
    PIXEL_MISMATCH = "pixel data does not match rows x columns x bits"
    MISSING_UID = "required UID missing"
    INVALID_UID = "required UID not a valid UID"
    INSTANCE_MISMATCH = "SOP Instance UID differs from the request"
    GARBAGE = "random bytes"
    BAD_DEFLATE = "deflated dataset that does not inflate to a whole dataset"


@dataclass(frozen=True)
class MalformedInstance:
    """One broken instance, ready to send as a Part 10 stream."""

    name: str
    defect: Defect
    part10: bytes
    """Preamble, file meta (naming the request SOP class, instance and transfer syntax)
    and the broken dataset bytes."""
    sop_class_uid: str
    sop_instance_uid: str
    expected_statuses: frozenset[int]


@dataclass(frozen=True)
class _Element:
    """Where one top-level element lies in an encoded dataset."""

    start: int
    length_at: int
    length_size: int
    vr_at: int | None
    value_at: int
    end: int


def _uid(seed: int, index: int, role: str) -> str:
    return str(generate_uid(entropy_srcs=[f"malformed-{seed}-{index}-{role}"]))


def _encode(ds: Dataset, *, implicit: bool) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def top_level_elements(body: bytes, *, implicit: bool) -> list[_Element]:
    """Locate the top-level elements of a well-formed little-endian dataset."""
    raw = list(data_element_generator(BytesIO(body), implicit, True, defer_size=None))
    starts: list[tuple[int, int, int, int | None, int]] = []
    for element in raw:
        value_at = int(element.value_tell)
        if implicit:
            starts.append((value_at - 8, value_at - 4, 4, None, value_at))
        elif str(element.VR).encode() in _LONG_VRS:
            starts.append((value_at - 12, value_at - 4, 4, value_at - 8, value_at))
        else:
            starts.append((value_at - 8, value_at - 2, 2, value_at - 4, value_at))
    ends = [s[0] for s in starts[1:]] + [len(body)]
    return [_Element(*start, end=end) for start, end in zip(starts, ends, strict=True)]


def _set_length(body: bytes, element: _Element, length: int) -> bytes:
    fmt = "<H" if element.length_size == 2 else "<I"
    return body[: element.length_at] + struct.pack(fmt, length) + body[
        element.length_at + element.length_size :
    ]


def _declared_length(body: bytes, element: _Element) -> int:
    fmt = "<H" if element.length_size == 2 else "<I"
    return int(struct.unpack_from(fmt, body, element.length_at)[0])


class MalformedGenerator:
    """Produce broken instances, the same ones for the same seed.

    Parameters
    ----------
    seed
        Fixes every random choice and every UID.
    """

    def __init__(self, seed: int = 20261123) -> None:
        self.seed = seed
        self._breakers: dict[Defect, Callable[[random.Random, int], MalformedInstance]] = {
            Defect.TRUNCATED: self._truncated,
            Defect.WRONG_LENGTH: self._wrong_length,
            Defect.BAD_VR: self._bad_vr,
            Defect.HUGE_LENGTH: self._huge_length,
            Defect.UNDEFINED_LENGTH: self._undefined_length,
            Defect.STRAY_DELIMITER: self._stray_delimiter,
            Defect.WRONG_SOP_CLASS: self._wrong_sop_class,
            Defect.PIXEL_MISMATCH: self._pixel_mismatch,
            Defect.MISSING_UID: self._missing_uid,
            Defect.INVALID_UID: self._invalid_uid,
            Defect.INSTANCE_MISMATCH: self._instance_mismatch,
            Defect.GARBAGE: self._garbage,
            Defect.BAD_DEFLATE: self._bad_deflate,
        }

    def generate(self, count: int) -> Iterator[MalformedInstance]:
        """Yield ``count`` broken instances, cycling through every :class:`Defect`."""
        defects = list(Defect)
        for index in range(count):
            rng = random.Random(f"{self.seed}-{index}")
            yield self._breakers[defects[index % len(defects)]](rng, index)

    # -- the valid starting point ------------------------------------------------------

    def base_dataset(self, rng: random.Random, index: int) -> Dataset:
        """A valid small radiograph with UIDs fixed by the seed and ``index``."""
        modality = rng.choice(("DX", "CR"))
        return make_cxr_dataset(
            rows=16, cols=rng.choice((16, 15)), bits=rng.choice((8, 12)), modality=modality,
            study_uid=_uid(self.seed, index, "study"),
            series_uid=_uid(self.seed, index, "series"),
            sop_uid=_uid(self.seed, index, "sop"),
            view_code=rng.choice(("PA", None)),
            patient_id=f"FUZZ-{index}", seed=index,
        )

    def _wrap(self, rng: random.Random, index: int, defect: Defect, ds: Dataset, body: bytes,
              *, implicit: bool, expected: frozenset[int] = frozenset({CANNOT_UNDERSTAND}),
              sop_instance_uid: str | None = None,
              transfer_syntax_uid: str | None = None) -> MalformedInstance:
        syntax = transfer_syntax_uid or (ImplicitVRLittleEndian if implicit
                                         else ExplicitVRLittleEndian)
        request_class = str(ds.SOPClassUID) if "SOPClassUID" in ds and str(
            ds.SOPClassUID) in REQUEST_SOP_CLASSES else rng.choice(REQUEST_SOP_CLASSES)
        instance_uid = sop_instance_uid or _uid(self.seed, index, "sop")
        return MalformedInstance(
            name=f"{index:04d}-{defect.name.lower()}",
            defect=defect,
            part10=part10(body, sop_class_uid=request_class, sop_instance_uid=instance_uid,
                          transfer_syntax_uid=syntax),
            sop_class_uid=request_class,
            sop_instance_uid=instance_uid,
            expected_statuses=expected,
        )

    def _encoded_base(self, rng: random.Random, index: int, *, implicit: bool | None = None
                      ) -> tuple[Dataset, bytes, bool, list[_Element]]:
        ds = self.base_dataset(rng, index)
        implicit = rng.random() < 0.3 if implicit is None else implicit
        body = _encode(ds, implicit=implicit)
        return ds, body, implicit, top_level_elements(body, implicit=implicit)

    # -- byte-level breaks -------------------------------------------------------------

    def _truncated(self, rng: random.Random, index: int) -> MalformedInstance:
        ds, body, implicit, elements = self._encoded_base(rng, index)
        element = rng.choice([e for e in elements if e.end - e.start >= 2])
        cut = rng.randint(element.start + 1, element.end - 1)
        return self._wrap(rng, index, Defect.TRUNCATED, ds, body[:cut], implicit=implicit)

    def _wrong_length(self, rng: random.Random, index: int) -> MalformedInstance:
        ds, body, implicit, elements = self._encoded_base(rng, index)
        element = rng.choice(elements)
        declared = _declared_length(body, element)
        delta = rng.choice([d for d in (-6, -4, -3, -2, -1, 1, 2, 3, 5, 7) if declared + d >= 0])
        broken = _set_length(body, element, declared + delta)
        return self._wrap(rng, index, Defect.WRONG_LENGTH, ds, broken, implicit=implicit,
                          expected=frozenset({CANNOT_UNDERSTAND, DOES_NOT_MATCH}))

    def _bad_vr(self, rng: random.Random, index: int) -> MalformedInstance:
        ds, body, _, elements = self._encoded_base(rng, index, implicit=False)
        element = rng.choice([e for e in elements if e.vr_at is not None])
        assert element.vr_at is not None
        current = body[element.vr_at : element.vr_at + 2]
        if current in _LONG_VRS:
            choices = (b"ZZ", b"\x00\x00", b"ob", b"US", b"LO", b"?!")
        else:
            choices = (b"ZZ", b"QQ", b"\x00\x00", b"lo", b"OB", b"UT", b"SQ", b"\xff\xfe")
        replacement = rng.choice(choices)
        broken = body[: element.vr_at] + replacement + body[element.vr_at + 2 :]
        return self._wrap(rng, index, Defect.BAD_VR, ds, broken, implicit=False)

    def _huge_length(self, rng: random.Random, index: int) -> MalformedInstance:
        ds, body, implicit, elements = self._encoded_base(rng, index)
        element = rng.choice(elements)
        if element.length_size == 2:
            length = rng.choice((0xFFFF, 0xFFFE, 0x8000))
        else:
            length = rng.choice((0xFFFFFFFE, 0x7FFFFFFF, 0x80000000, 0x10000000, len(body) * 8))
        broken = _set_length(body, element, length)
        return self._wrap(rng, index, Defect.HUGE_LENGTH, ds, broken, implicit=implicit)

    def _undefined_length(self, rng: random.Random, index: int) -> MalformedInstance:
        ds, body, implicit, elements = self._encoded_base(rng, index)
        candidates = [e for e in elements if e.length_size == 4]
        element = rng.choice(candidates)
        broken = _set_length(body, element, 0xFFFFFFFF)
        return self._wrap(rng, index, Defect.UNDEFINED_LENGTH, ds, broken, implicit=implicit)

    def _stray_delimiter(self, rng: random.Random, index: int) -> MalformedInstance:
        ds, body, implicit, elements = self._encoded_base(rng, index)
        at = rng.choice(elements).start
        broken = body[:at] + rng.choice(_DELIMITERS) + body[at:]
        return self._wrap(rng, index, Defect.STRAY_DELIMITER, ds, broken, implicit=implicit)

    def _garbage(self, rng: random.Random, index: int) -> MalformedInstance:
        ds = self.base_dataset(rng, index)
        kind = rng.randrange(3)
        if kind == 0:
            body = rng.randbytes(rng.randint(0, 2048))
        elif kind == 1:  # a valid first element, then noise
            body = _encode(ds, implicit=False)[:22] + rng.randbytes(rng.randint(1, 512))
        else:
            body = b"\x00" * rng.choice((0, 1, 2, 7))
        return self._wrap(rng, index, Defect.GARBAGE, ds, body, implicit=False)

    def _bad_deflate(self, rng: random.Random, index: int) -> MalformedInstance:
        ds = self.base_dataset(rng, index)
        whole = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        deflated = whole.compress(_encode(ds, implicit=False)) + whole.flush()
        kind = rng.randrange(3)
        if kind == 0:  # the stream cut short
            body = deflated[: rng.randint(1, len(deflated) - 2)]
        elif kind == 1:  # not a deflate stream at all
            body = rng.randbytes(rng.randint(1, 600))
        else:  # a whole stream holding a truncated dataset
            plain = _encode(ds, implicit=False)
            squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            cut = top_level_elements(plain, implicit=False)[-1].value_at + 3
            body = squeeze.compress(plain[:cut]) + squeeze.flush()
        return self._wrap(rng, index, Defect.BAD_DEFLATE, ds, body, implicit=False,
                          transfer_syntax_uid=DeflatedExplicitVRLittleEndian)

    # -- content-level breaks ----------------------------------------------------------

    def _wrong_sop_class(self, rng: random.Random, index: int) -> MalformedInstance:
        ds = self.base_dataset(rng, index)
        request_class = rng.choice(REQUEST_SOP_CLASSES)
        others = [c for c in (*OTHER_SOP_CLASSES, *REQUEST_SOP_CLASSES) if c != request_class]
        ds.SOPClassUID = rng.choice(others)
        implicit = rng.random() < 0.3
        instance = self._wrap(rng, index, Defect.WRONG_SOP_CLASS, ds,
                              _encode(ds, implicit=implicit), implicit=implicit,
                              expected=frozenset({DOES_NOT_MATCH}))
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        return MalformedInstance(
            instance.name, instance.defect,
            part10(_encode(ds, implicit=implicit), sop_class_uid=request_class,
                   sop_instance_uid=instance.sop_instance_uid, transfer_syntax_uid=syntax),
            request_class, instance.sop_instance_uid, instance.expected_statuses,
        )

    def _pixel_mismatch(self, rng: random.Random, index: int) -> MalformedInstance:
        ds = self.base_dataset(rng, index)
        pixels = bytes(ds.PixelData)
        change = rng.randrange(8)
        if change == 0:
            ds.Rows = int(ds.Rows) * rng.choice((2, 3, 16))
        elif change == 1:
            ds.Columns = int(ds.Columns) + rng.choice((2, 5, 100))
        elif change == 2:
            ds.BitsAllocated = 32 if int(ds.BitsAllocated) == 16 else 16
            ds.BitsStored = ds.HighBit + 1 if "HighBit" in ds else 8
        elif change == 3:
            ds.PixelData = pixels[: len(pixels) // rng.choice((2, 4, 8)) // 2 * 2]
        elif change == 4:
            ds.PixelData = pixels * rng.choice((2, 3))
        elif change == 5:
            ds.Rows = rng.choice((0, 0))
        elif change == 6:
            ds.BitsAllocated = rng.choice((12, 7, 0, 24))
        else:
            ds.NumberOfFrames = rng.choice((2, 4, 64))
        implicit = rng.random() < 0.3
        return self._wrap(rng, index, Defect.PIXEL_MISMATCH, ds, _encode(ds, implicit=implicit),
                          implicit=implicit)

    def _missing_uid(self, rng: random.Random, index: int) -> MalformedInstance:
        ds = self.base_dataset(rng, index)
        request_class = str(ds.SOPClassUID)
        delattr(ds, rng.choice(_UID_KEYWORDS))
        implicit = rng.random() < 0.3
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        uid = _uid(self.seed, index, "sop")
        return MalformedInstance(
            f"{index:04d}-{Defect.MISSING_UID.name.lower()}", Defect.MISSING_UID,
            part10(_encode(ds, implicit=implicit), sop_class_uid=request_class,
                   sop_instance_uid=uid, transfer_syntax_uid=syntax),
            request_class, uid, frozenset({CANNOT_UNDERSTAND}),
        )

    def _invalid_uid(self, rng: random.Random, index: int) -> MalformedInstance:
        ds = self.base_dataset(rng, index)
        keyword = rng.choice(("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
        value = rng.choice(_INVALID_UIDS)
        setattr(ds, keyword, value)
        implicit = rng.random() < 0.3
        return self._wrap(rng, index, Defect.INVALID_UID, ds, _encode(ds, implicit=implicit),
                          implicit=implicit)

    def _instance_mismatch(self, rng: random.Random, index: int) -> MalformedInstance:
        ds = self.base_dataset(rng, index)
        implicit = rng.random() < 0.3
        return self._wrap(rng, index, Defect.INSTANCE_MISMATCH, ds,
                          _encode(ds, implicit=implicit), implicit=implicit,
                          sop_instance_uid=_uid(self.seed, index, "other-sop"))
