"""Part 10 files for network tests: split received files, craft broken ones."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID


def _not_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 0x0002


def split_part10(data: bytes) -> tuple[FileMetaDataset, bytes]:
    """Return the File Meta Information of a Part 10 stream and its dataset bytes."""
    stream = BytesIO(data)
    read_preamble(stream, False)
    meta = read_dataset(stream, is_implicit_VR=False, is_little_endian=True, stop_when=_not_meta)
    return FileMetaDataset(meta), data[stream.tell() :]


def read_part10(path: Path) -> tuple[FileMetaDataset, bytes]:
    """:func:`split_part10` of a file."""
    return split_part10(path.read_bytes())


def part10(dataset_bytes: bytes, *, sop_class_uid: str, sop_instance_uid: str,
           transfer_syntax_uid: str) -> bytes:
    """Wrap dataset bytes (valid or not) in a preamble and File Meta Information."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue() + dataset_bytes


def write_raw_part10(
    path: Path,
    dataset_bytes: bytes,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
) -> Path:
    """Write a Part 10 file whose dataset is exactly ``dataset_bytes`` (valid or not)."""
    path.write_bytes(part10(dataset_bytes, sop_class_uid=sop_class_uid,
                            sop_instance_uid=sop_instance_uid,
                            transfer_syntax_uid=transfer_syntax_uid))
    return path


def stored_files(root: Path) -> list[Path]:
    """Every file under a storage root, temporaries included, sorted."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def temporary_files(root: Path) -> list[Path]:
    """Partial-write temporaries (``.<name>.<hex>.tmp``) under a storage root."""
    return sorted(root.rglob(".*.tmp")) if root.exists() else []
