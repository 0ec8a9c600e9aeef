"""Durable storage of received instances on the local file system.

An instance is written to a temporary file in its final folder, fsynced,
renamed into place and the folder fsynced, so that a file under its final
name is always complete, even across a power cut.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

#: Digits and dots only: path-safe. Components with leading zeros (which PS3.5 forbids, but
#: older devices send) are accepted, so that studies stored under such UIDs stay reachable.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


#: Folder of the storage root holding quarantined instances (never a UID, so never a study).
QUARANTINE_FOLDER = "quarantine"
#: Folder of the storage root where received data sets are written as they arrive.
SPOOL_FOLDER = ".spool"


class StorageFullError(OSError):
    """The storage volume is past its watermark or out of space."""


def is_valid_uid(value: str) -> bool:
    """Return whether ``value`` is usable as a DICOM UID here: 1 to 64 digits and dots.

    Components with leading zeros are accepted (older devices send them); nothing but
    digits and single dots between them is, which keeps every UID path-safe.
    """
    return 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raise_storage_error(exc: OSError) -> NoReturn:
    """Raise ``exc``, as :class:`StorageFullError` when the volume is out of space."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StorageFullError(exc.errno, "storage volume is full") from exc
    raise exc


def _make_dirs_durably(path: Path) -> None:
    """Create ``path`` and any missing parents, fsyncing each new entry's parent."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(folder.parent)


@dataclass(frozen=True)
class Capacity:
    """Free space on the storage volume and whether new data is accepted."""

    free_bytes: int
    total_bytes: int
    used_percent: float
    accepting: bool


class InstanceStore:
    """Instance files under ``root/<study>/<series>/<sop>_<digest>.dcm``.

    Parameters
    ----------
    root
        Storage folder (created when missing).
    min_free_mb
        Refuse new data when less than this is free.
    max_used_percent
        Refuse new data when the volume is fuller than this.
    """

    def __init__(self, root: Path, *, min_free_mb: int, max_used_percent: float) -> None:
        self.root = root.resolve()
        self.min_free_bytes = min_free_mb * 1024 * 1024
        self.max_used_percent = max_used_percent
        _make_dirs_durably(self.root)

    def capacity(self) -> Capacity:
        """Measure the storage volume against the watermarks."""
        usage = shutil.disk_usage(self.root)
        used_percent = 100.0 * (usage.total - usage.free) / usage.total if usage.total else 100.0
        accepting = usage.free >= self.min_free_bytes and used_percent <= self.max_used_percent
        return Capacity(usage.free, usage.total, used_percent, accepting)

    def relative_folder(self, study_uid: str, series_uid: str) -> str:
        """Return the folder of a series, relative to the root.

        Raises
        ------
        ValueError
            If a UID is not a valid DICOM UID (which also rules out path tricks).
        """
        for uid in (study_uid, series_uid):
            if not is_valid_uid(uid):
                raise ValueError(f"not a valid DICOM UID: {uid!r}")
        return f"{study_uid}/{series_uid}"

    def relative_path(
        self, study_uid: str, series_uid: str, sop_instance_uid: str, sha256: str
    ) -> str:
        """Return the storage path of an instance, relative to the root.

        Raises
        ------
        ValueError
            If a UID is not a valid DICOM UID (which also rules out path tricks).
        """
        if not is_valid_uid(sop_instance_uid):
            raise ValueError(f"not a valid DICOM UID: {sop_instance_uid!r}")
        folder = self.relative_folder(study_uid, series_uid)
        return f"{folder}/{sop_instance_uid}_{sha256[:16]}.dcm"

    def quarantine_path(
        self, study_uid: str, series_uid: str, sop_instance_uid: str, sha256: str
    ) -> str:
        """Return where a quarantined copy is kept, relative to the root.

        ``quarantine/<study>/<series>/<sop>_<digest>.dcm``: beside, never inside, the
        study folders the node serves from.

        Raises
        ------
        ValueError
            If a UID is not a valid DICOM UID.
        """
        return f"{QUARANTINE_FOLDER}/" + self.relative_path(
            study_uid, series_uid, sop_instance_uid, sha256)

    def move(self, source: str, target: str) -> Path:
        """Rename a stored file to another relative path, durably (same volume).

        Returns
        -------
        Path
            The new absolute path; both folders are fsynced.

        Raises
        ------
        OSError
            If the rename fails (the source is then unchanged).
        """
        final = self.absolute(target)
        _make_dirs_durably(final.parent)
        os.rename(self.absolute(source), final)
        _fsync_dir(final.parent)
        _fsync_dir(self.absolute(source).parent)
        return final

    def absolute(self, relative_path: str) -> Path:
        """Return the absolute path of a stored file."""
        return self.root / relative_path

    def write(self, relative_path: str, data: bytes) -> Path:
        """Write ``data`` durably under ``relative_path``.

        Returns
        -------
        Path
            The final path; the file is complete and fsynced with its folder.

        Raises
        ------
        StorageFullError
            When the volume is out of space (nothing is left behind).
        OSError
            On other I/O failures (nothing is left behind).
        """
        folder, _, _ = relative_path.rpartition("/")
        return self.publish(self.stage(folder, data), relative_path)

    def stage(self, relative_folder: str, data: bytes | memoryview) -> Path:
        """Write ``data`` (bytes or a buffer) durably to a new temporary file in
        ``relative_folder``.

        The folder is created durably when missing. The file is complete and
        fsynced when this returns, but it only counts as stored once
        :meth:`publish` has given it its final name (a crash before that leaves
        a temporary that :meth:`sweep_temporaries` removes). Staging lets the
        caller write before it knows the final name, e.g. while a digest that
        goes into the name is still being computed.

        Returns
        -------
        Path
            The temporary file, for :meth:`publish`.

        Raises
        ------
        StorageFullError
            When the volume is out of space (nothing is left behind).
        OSError
            On other I/O failures (nothing is left behind).
        """
        temporary = self._staging_path(relative_folder)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            _raise_storage_error(exc)
        os.close(fd)
        return temporary

    def _staging_path(self, relative_folder: str) -> Path:
        """A new temporary name in ``relative_folder``, which is created durably."""
        folder = self.absolute(relative_folder)
        _make_dirs_durably(folder)
        return folder / f".staged.{uuid.uuid4().hex}.tmp"

    def spool_folder(self) -> Path:
        """The folder received data sets are written to as they arrive (created durably).

        It is on the storage volume, so a spooled file is staged by a link, never copied.
        """
        folder = self.root / SPOOL_FOLDER
        _make_dirs_durably(folder)
        return folder

    def stage_file(self, relative_folder: str, source: Path) -> Path:
        """Stage the file ``source`` (written, not yet fsynced) like :meth:`stage` does bytes.

        ``source`` is fsynced and gets a second, temporary name in ``relative_folder`` (a
        hard link: nothing is copied); ``source`` itself is left where it is. Where the
        link cannot be made (another volume), the bytes are copied.

        Returns
        -------
        Path
            The temporary file, for :meth:`publish`.

        Raises
        ------
        StorageFullError
            When the volume is out of space (nothing is left behind).
        OSError
            On other I/O failures (nothing is left behind).
        """
        temporary = self._staging_path(relative_folder)
        try:
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fchmod(fd, 0o640)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(source, temporary)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                return self.stage(relative_folder, source.read_bytes())
            temporary.unlink(missing_ok=True)
            _raise_storage_error(exc)
        return temporary

    def publish(self, temporary: Path, relative_path: str) -> Path:
        """Give a staged file its final name, durably.

        Parameters
        ----------
        temporary
            A file returned by :meth:`stage`, in the folder of ``relative_path``.
        relative_path
            The final name; an existing file of that name is replaced atomically.

        Returns
        -------
        Path
            The final path; the rename is fsynced with its folder.

        Raises
        ------
        ValueError
            If the staged file is not in the final folder (the rename must not
            cross folders).
        OSError
            If the rename fails (the staged file is then removed) or the folder
            fsync fails.
        """
        final = self.absolute(relative_path)
        if temporary.parent != final.parent:
            raise ValueError("a staged file is published within its own folder")
        try:
            os.replace(temporary, final)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        return final

    def publish_new(self, temporary: Path, relative_path: str) -> bool:
        """Give a staged file its final name unless a file of that name exists.

        Like :meth:`publish`, but an existing file is never replaced: the name holds the
        SOP Instance UID and the content digest, so an existing file holds these bytes.

        Returns
        -------
        bool
            ``True`` when the file was published (linked under its final name, the folder
            fsynced), ``False`` when the name was taken; the temporary is removed either way.

        Raises
        ------
        ValueError
            If the staged file is not in the final folder.
        OSError
            If the link or the folder fsync fails (the staged file is then removed).
        """
        final = self.absolute(relative_path)
        if temporary.parent != final.parent:
            raise ValueError("a staged file is published within its own folder")
        try:
            os.link(temporary, final)
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_dir(final.parent)
        return True

    def remove(self, relative_path: str) -> None:
        """Delete a stored file if present (and fsync its folder)."""
        path = self.absolute(relative_path)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    def sweep_temporaries(self) -> int:
        """Delete temporary files left by a crash mid-write; return how many."""
        removed = 0
        for leftover in self.root.rglob(".*.tmp"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed
