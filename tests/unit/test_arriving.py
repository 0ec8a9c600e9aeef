"""The spooled file of a received data set: hashed in order while written, written
back as it grows, and trusted for its digest only when every byte went through it."""

from __future__ import annotations

import ctypes
import errno
import gc
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from node.dicom import arriving
from node.dicom.arriving import ArrivingFile


def open_arriving(folder: Path) -> ArrivingFile:
    return ArrivingFile(tempfile.NamedTemporaryFile(dir=folder, delete=False, mode="wb"))  # noqa: SIM115


def finish(spooled: ArrivingFile) -> str | None:
    """Ask for the digest after the last write, close the file; the digest or ``None``."""
    digest = spooled.digest()
    spooled.close()
    return None if digest is None else digest.result(timeout=10)


def sha256_of(spooled: ArrivingFile) -> str:
    return hashlib.sha256(Path(spooled.name).read_bytes()).hexdigest()


def chunks(total: int, size: int, seed: int = 0) -> list[bytes]:
    data = hashlib.shake_256(seed.to_bytes(4, "big")).digest(total)
    return [data[i:i + size] for i in range(0, total, size)]


@pytest.mark.parametrize(("total", "size"), [
    (0, 1), (132, 132), (300_000, 16_372), (arriving.INLINE_HASH_MAX_BYTES + 1, 131_066),
    (3 * arriving.MAX_UNHASHED_BYTES + 7, 262_138),
])
def test_the_digest_is_that_of_the_file(tmp_path: Path, total: int, size: int) -> None:
    spooled = open_arriving(tmp_path)
    for chunk in chunks(total, size):
        assert spooled.write(chunk) == len(chunk)
        spooled.file.flush()  # what pynetdicom does after each PDV
    assert finish(spooled) == sha256_of(spooled)


def test_views_are_copied_before_they_are_queued(tmp_path: Path) -> None:
    """A writer that reuses its buffer must not change what is hashed later."""
    spooled = open_arriving(tmp_path)
    buffer = bytearray(arriving.HASH_BATCH)
    expected = hashlib.sha256()
    for value in range(6):
        buffer[:] = bytes([value]) * len(buffer)
        expected.update(buffer)
        spooled.write(memoryview(buffer))
    assert finish(spooled) == expected.hexdigest()


def test_large_files_are_hashed_on_the_helper_threads_as_they_arrive(tmp_path: Path) -> None:
    """Batches are hashed before the last write, off the writing thread."""
    spooled = open_arriving(tmp_path)
    hashing_threads: set[str] = set()
    original = spooled._sha

    class RecordingSha:
        def update(self, data: bytes) -> None:
            hashing_threads.add(threading.current_thread().name)
            original.update(data)

        def hexdigest(self) -> str:
            return original.hexdigest()

    spooled._sha = RecordingSha()  # type: ignore[assignment]
    for chunk in chunks(4 * arriving.HASH_BATCH, 131_066):
        spooled.write(chunk)
    assert spooled._tail is not None
    spooled._tail.result(timeout=10)
    assert hashing_threads and all(n.startswith("arriving-hash") for n in hashing_threads)
    assert finish(spooled) == sha256_of(spooled)


def test_unhashed_bytes_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the hash falls behind, writing waits for it: a fast sender cannot make the
    node hold a whole data set in memory."""
    spooled = open_arriving(tmp_path)
    gate = threading.Event()
    original = spooled._hash_after

    def slow_hash(previous: Any, batch: list[bytes], last: bool) -> Any:
        gate.wait(10)
        return original(previous, batch, last)

    monkeypatch.setattr(spooled, "_hash_after", slow_hash)
    writer_done = threading.Event()

    def write_all() -> None:
        for chunk in chunks(3 * arriving.MAX_UNHASHED_BYTES, 131_066):
            spooled.write(chunk)
        writer_done.set()

    writer = threading.Thread(target=write_all)
    writer.start()
    assert not writer_done.wait(1.0)  # held back, not buffering everything
    assert spooled._in_flight_bytes <= arriving.MAX_UNHASHED_BYTES + 2 * arriving.HASH_BATCH
    gate.set()
    writer.join(10)
    assert writer_done.is_set()
    assert finish(spooled) == sha256_of(spooled)


def test_writeback_is_started_for_what_has_reached_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writeback covers the file in contiguous steps, each only once its bytes are in the
    file (not in the writer's buffer)."""
    started: list[tuple[int, int, bytes]] = []

    def record(fd: int, offset: int, nbytes: int) -> bool:
        started.append((offset, nbytes, os.pread(fd, nbytes, offset)))
        return True

    monkeypatch.setattr(arriving, "start_writeback", record)
    spooled = open_arriving(tmp_path)
    data = b"".join(chunks(5 * arriving.WRITEBACK_STEP + 99, 1000))
    for start in range(0, len(data), 1000):
        spooled.write(data[start:start + 1000])  # no flush between writes
    spooled.close()
    offset = 0
    for start, nbytes, seen in started:
        assert start == offset and nbytes >= arriving.WRITEBACK_STEP
        assert seen == data[start:start + nbytes]
        offset += nbytes
    assert len(started) == 4 and len(data) - offset < arriving.WRITEBACK_STEP


def test_the_kernel_call_is_real(tmp_path: Path) -> None:
    """On Linux the writeback request reaches ``sync_file_range``: accepted for an open
    file, refused (EBADF) for a closed descriptor."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10_000)
    fd = os.open(path, os.O_RDWR)
    try:
        assert arriving.start_writeback(fd, 0, 10_000) is True
    finally:
        os.close(fd)
    assert arriving.start_writeback(fd, 0, 10_000) is False
    assert ctypes.get_errno() == errno.EBADF


def test_an_unforeseen_use_of_the_file_withdraws_the_digest(tmp_path: Path) -> None:
    spooled = open_arriving(tmp_path)
    spooled.write(b"abc")
    spooled.seek(0)  # passed to the file, which may now hold other bytes than were hashed
    spooled.write(b"X")
    assert spooled.digest() is None
    spooled.close()


def test_bytes_written_around_the_wrapper_withdraw_the_digest(tmp_path: Path) -> None:
    spooled = open_arriving(tmp_path)
    spooled.write(b"abc")
    with open(spooled.name, "ab") as other:
        other.write(b"more")
    assert spooled.digest() is None
    spooled.close()


def test_files_arriving_together_leave_the_work_to_after_their_last_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With another data set arriving, a file neither hashes nor starts writeback early
    (the cores are busy receiving): its digest is withdrawn and the ingest path hashes
    it after the last PDU. Alone again, the next file does both."""
    started: list[int] = []
    monkeypatch.setattr(arriving, "start_writeback",
                        lambda fd, offset, nbytes: started.append(nbytes) or True)
    first, second = open_arriving(tmp_path), open_arriving(tmp_path)
    for chunk in chunks(3 * arriving.WRITEBACK_STEP, 131_066):
        first.write(chunk)
        second.write(chunk)
    assert first.digest() is None and second.digest() is None
    assert started == []
    first.close()
    second.close()

    alone = open_arriving(tmp_path)
    for chunk in chunks(3 * arriving.WRITEBACK_STEP, 131_066):
        alone.write(chunk)
    assert finish(alone) == sha256_of(alone) and len(started) == 2
    assert Path(first.name).read_bytes() == Path(alone.name).read_bytes()


def test_an_abandoned_file_stops_counting_as_arriving(tmp_path: Path) -> None:
    """A transfer cut off mid-way (its file never closed) does not keep the next file
    from early work once it is gone."""
    abandoned = open_arriving(tmp_path)
    abandoned.write(b"x" * 1000)
    del abandoned
    gc.collect()
    alone = open_arriving(tmp_path)
    for chunk in chunks(2 * arriving.HASH_BATCH, 131_066):
        alone.write(chunk)
    assert finish(alone) == sha256_of(alone)
