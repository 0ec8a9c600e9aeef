"""Durable instance storage: complete files, UID-only paths, crash leftovers, watermarks."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from node.storage import InstanceStore, is_valid_uid

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.1.2"
SOP = "1.2.826.0.1.3680043.8.498.1.2.3"


@pytest.fixture
def store(tmp_path: Path) -> InstanceStore:
    """A store under tmp_path that accepts data (no watermark)."""
    return InstanceStore(tmp_path / "storage", min_free_mb=0, max_used_percent=100)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_root_is_created(tmp_path: Path) -> None:
    """A missing storage root (and its parents) is created."""
    root = tmp_path / "a" / "b" / "storage"
    InstanceStore(root, min_free_mb=0, max_used_percent=100)
    assert root.is_dir()


def test_write_leaves_exactly_the_final_complete_file(store: InstanceStore) -> None:
    """A write produces the complete file under its final name and no temporary."""
    data = os.urandom(300_000)
    relative = store.relative_path(STUDY, SERIES, SOP, _digest(data))
    final = store.write(relative, data)
    assert final == store.root / relative
    assert final.read_bytes() == data
    assert [p.name for p in final.parent.iterdir()] == [final.name]
    assert store.sweep_temporaries() == 0


def test_relative_path_layout(store: InstanceStore) -> None:
    """Files live under study/series, named by SOP Instance UID and digest prefix."""
    digest = _digest(b"x")
    assert store.relative_path(STUDY, SERIES, SOP, digest) == (
        f"{STUDY}/{SERIES}/{SOP}_{digest[:16]}.dcm"
    )


def test_rewrite_replaces_atomically(store: InstanceStore) -> None:
    """Writing the same path again replaces the file whole."""
    relative = store.relative_path(STUDY, SERIES, SOP, _digest(b"v1"))
    store.write(relative, b"first version")
    final = store.write(relative, b"second")
    assert final.read_bytes() == b"second"
    assert len(list(final.parent.iterdir())) == 1


def test_remove_deletes_and_tolerates_absence(store: InstanceStore) -> None:
    """remove() deletes a stored file and ignores one already gone."""
    relative = store.relative_path(STUDY, SERIES, SOP, _digest(b"x"))
    store.write(relative, b"x")
    store.remove(relative)
    assert not store.absolute(relative).exists()
    store.remove(relative)


@pytest.mark.parametrize(
    "uid",
    [
        "../x",
        "..",
        "1.2/../../etc",
        "/etc/passwd",
        "1.2.3/4",
        "1.2.3\\4",
        "1.2.a",
        "1..2",
        ".1.2",
        "1.2.",
        "",
        "1.2.3 ",
        "1" * 65,
    ],
)
def test_invalid_uids_are_rejected(store: InstanceStore, uid: str) -> None:
    """Anything but a DICOM UID is refused in every path position (no traversal)."""
    digest = _digest(b"x")
    assert not is_valid_uid(uid)
    for args in ((uid, SERIES, SOP), (STUDY, uid, SOP), (STUDY, SERIES, uid)):
        with pytest.raises(ValueError, match="not a valid DICOM UID"):
            store.relative_path(*args, digest)
    assert list(store.root.iterdir()) == []


def test_longest_valid_uid_is_accepted() -> None:
    """A 64-character UID is valid; 65 is not."""
    uid = "1." + "2" * 62
    assert len(uid) == 64 and is_valid_uid(uid)
    assert not is_valid_uid(uid + "3")


def test_sweep_removes_only_temporaries(store: InstanceStore) -> None:
    """sweep_temporaries deletes partial writes left by a crash, nothing else."""
    relative = store.relative_path(STUDY, SERIES, SOP, _digest(b"kept"))
    kept = store.write(relative, b"kept")
    leftovers = [
        kept.parent / f".{kept.name}.0123abcd.tmp",
        store.root / STUDY / f".{SOP}_deadbeef.dcm.9f9f.tmp",
        store.root / ".orphan.tmp",
    ]
    for leftover in leftovers:
        leftover.write_bytes(b"partial")
    assert store.sweep_temporaries() == len(leftovers)
    assert not any(p.exists() for p in leftovers)
    assert kept.read_bytes() == b"kept"
    assert store.sweep_temporaries() == 0


def test_capacity_accepts_below_watermarks(store: InstanceStore) -> None:
    """With no watermark the volume accepts data and reports plausible numbers."""
    capacity = store.capacity()
    usage = shutil.disk_usage(store.root)
    assert capacity.accepting is True
    assert 0 < capacity.total_bytes == usage.total
    assert 0 <= capacity.free_bytes <= capacity.total_bytes
    assert 0.0 <= capacity.used_percent <= 100.0


def test_capacity_refuses_below_min_free(tmp_path: Path) -> None:
    """Less free space than min_free_mb flags the volume as not accepting."""
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    store = InstanceStore(tmp_path / "s", min_free_mb=free_mb + 1024, max_used_percent=100)
    assert store.capacity().accepting is False


def test_capacity_refuses_above_used_percent(tmp_path: Path) -> None:
    """A volume fuller than max_used_percent is flagged as not accepting."""
    usage = shutil.disk_usage(tmp_path)
    used = 100.0 * (usage.total - usage.free) / usage.total
    assert used >= 0.01, "the test volume reports no use at all"
    store = InstanceStore(tmp_path / "s", min_free_mb=0, max_used_percent=used / 2)
    capacity = store.capacity()
    assert capacity.used_percent > used / 2
    assert capacity.accepting is False


def _spooled(store: InstanceStore, data: bytes) -> Path:
    """A file as pynetdicom leaves it in the spool folder: written, not fsynced, mode 0600."""
    spooled = store.spool_folder() / ".received.abc123.tmp"
    spooled.write_bytes(data)
    spooled.chmod(0o600)
    return spooled


def test_a_spooled_file_is_staged_by_a_link_and_published_without_a_copy(
        store: InstanceStore) -> None:
    data = os.urandom(200_000)
    spooled = _spooled(store, data)
    relative = store.relative_path(STUDY, SERIES, SOP, _digest(data))
    staged = store.stage_file(store.relative_folder(STUDY, SERIES), spooled)
    assert staged.parent == store.absolute(relative).parent
    assert os.path.samefile(staged, spooled)  # the same inode: nothing was copied
    assert spooled.exists()  # the spooled name stays for its owner to remove
    assert store.publish_new(staged, relative)
    final = store.absolute(relative)
    assert final.read_bytes() == data
    assert os.path.samefile(final, spooled)
    assert oct(final.stat().st_mode & 0o777) == oct(0o640)
    assert not staged.exists()
    spooled.unlink()
    assert final.stat().st_nlink == 1
    assert list(final.parent.glob(".*.tmp")) == []


def test_publish_new_never_replaces_a_stored_file(store: InstanceStore) -> None:
    stored = os.urandom(1000)
    relative = store.relative_path(STUDY, SERIES, SOP, _digest(stored))
    final = store.write(relative, stored)
    inode = final.stat().st_ino
    folder = store.relative_folder(STUDY, SERIES)
    assert not store.publish_new(store.stage(folder, os.urandom(1000)), relative)
    assert final.read_bytes() == stored and final.stat().st_ino == inode
    assert list(final.parent.glob(".*.tmp")) == []


def test_sweep_removes_spooled_leftovers(store: InstanceStore) -> None:
    """A crash mid-receive leaves a spooled temporary: the start-up sweep removes it."""
    spooled = _spooled(store, b"partial")
    assert store.sweep_temporaries() == 1
    assert not spooled.exists()
