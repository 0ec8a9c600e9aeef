"""A received data set's file, hashed and written back to disk while its PDUs arrive.

Before a C-STORE is answered, its file must be fsynced and its SHA-256 known (the
digest goes into the stored file's name and the index). Done after the last PDU, both
are on the critical path of every large instance: a 10 MB image waits about 5 ms for
its fsync and 6 ms for its hash, while the sender, which sends nothing until it has the
answer, sits idle. :class:`ArrivingFile` moves both into the transfer:

* every chunk written is also fed to a SHA-256, in order, on a helper thread (the
  hash releases the GIL, so it runs beside the receiving thread); at most
  :data:`MAX_UNHASHED_BYTES` wait for it, so a fast sender cannot make the node hold
  a whole large data set in memory;
* every :data:`WRITEBACK_STEP` bytes, the kernel is asked to start writing what has
  arrived (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait), so the
  fsync after the last PDU only waits for the tail.

This pays while a core is idle during the transfer, that is while the data set is the
only one arriving in the process. When several arrive at once the cores are busy
receiving, the early work only competes with that (measured: 15 % less throughput for
four concurrent senders of large images), so a file that finds others arriving stops
doing it and leaves the hash and the whole fsync to after its last PDU, as before.

Neither changes what makes an instance durable: the file and its folder are still
fsynced, and the row committed, before Success. The digest is offered only when every
byte of the file went through :meth:`ArrivingFile.write` and was hashed; anything else
(a seek, a short file, a file that stopped early work) withdraws it and the ingest path
hashes the file as before.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

#: Hashed on the helper thread in batches of about this many bytes.
HASH_BATCH = 1 << 20
#: The most received bytes that may wait for the hash before writing waits for it.
MAX_UNHASHED_BYTES = 8 << 20
#: Writeback of the arrived bytes is started every this many bytes.
WRITEBACK_STEP = 2 << 20
#: Smaller data sets are hashed on the thread that asks for the digest (a hand-off
#: would cost more than it saves).
INLINE_HASH_MAX_BYTES = 1 << 20

_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of dirty pages, do not wait
_hash_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="arriving-hash")


def _load_sync_file_range() -> Callable[[int, int, int], bool]:
    """``sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)``, or a function that
    does nothing where the C library lacks it (not Linux): the final fsync then does all
    the writing. It returns whether the kernel accepted the request (``ctypes.get_errno``
    says why not); a refusal changes nothing, as the fsync still follows."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return lambda _fd, _offset, _nbytes: False
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, nbytes: int) -> bool:
        return bool(call(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE) == 0)

    return start_writeback


start_writeback = _load_sync_file_range()

#: The files still receiving their data sets (an aborted transfer's file leaves the set
#: when it is collected).
_receiving: weakref.WeakSet[ArrivingFile] = weakref.WeakSet()
_receiving_lock = threading.Lock()


def _others_arriving(spooled: ArrivingFile) -> bool:
    with _receiving_lock:
        return len(_receiving) > 1 or spooled not in _receiving


class ArrivingFile:
    """Wraps the ``NamedTemporaryFile`` pynetdicom writes a C-STORE data set to.

    pynetdicom calls :meth:`write`, ``file.flush()``, ``name`` and :meth:`close`; any
    other attribute is passed to the wrapped file and withdraws the digest.

    Parameters
    ----------
    wrapped
        The open temporary file (binary, write mode).
    """

    def __init__(self, wrapped: IO[bytes]) -> None:
        self._wrapped = wrapped
        self._fd = wrapped.fileno()
        self._sha = hashlib.sha256()
        self._size = 0
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._in_flight: collections.deque[tuple[Future[None], int]] = collections.deque()
        self._in_flight_bytes = 0
        self._tail: Future[None] | None = None
        self._written_back_to = 0
        self._early_work = True
        self._trusted = True
        with _receiving_lock:
            _receiving.add(self)

    @property
    def name(self) -> str:
        """The file's path."""
        return str(self._wrapped.name)

    @property
    def file(self) -> Any:
        """The underlying buffered file (pynetdicom flushes it after each write)."""
        return getattr(self._wrapped, "file", self._wrapped)

    def __getattr__(self, attribute: str) -> Any:
        self._trusted = False  # an unforeseen use: the bytes may not be what was hashed
        return getattr(self._wrapped, attribute)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data``; feed it to the hash and, now and then, start its writeback."""
        if not self._early_work:
            return int(self._wrapped.write(data))
        chunk = data if isinstance(data, bytes) else bytes(data)
        written = self._wrapped.write(chunk)
        if written != len(chunk):
            self._trusted = False
        self._size += len(chunk)
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= HASH_BATCH:
            if _others_arriving(self):
                self._stop_early_work()
                return written
            self._hash_batch()
        if self._size - self._written_back_to >= WRITEBACK_STEP:
            self._wrapped.flush()
            start_writeback(self._fd, self._written_back_to, self._size - self._written_back_to)
            self._written_back_to = self._size
        return written

    def close(self) -> None:
        """Close the file (what has been queued for the hash still completes)."""
        self._arrived()
        self._wrapped.close()

    def discard(self) -> None:
        """Close and remove the file of a data set that will never be complete (its
        association ended half-way): pynetdicom removes only the files it handed to a
        C-STORE handler."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.name)

    def digest(self) -> Future[str] | None:
        """The SHA-256 (hex) of the file as written, once every write has been hashed.

        Call after the last write. ``None`` when the file may hold other bytes than
        those hashed here (then hash the file itself).
        """
        self._arrived()
        with contextlib.suppress(OSError, ValueError):
            self._wrapped.flush()
            if (self._early_work and self._trusted
                    and os.fstat(self._fd).st_size == self._size):
                return self._finish()
        return None

    def _arrived(self) -> None:
        with _receiving_lock:
            _receiving.discard(self)

    def _stop_early_work(self) -> None:
        self._early_work = False  # still arriving: it keeps counting for the others
        self._batch, self._batch_bytes = [], 0

    def _finish(self) -> Future[str]:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if self._tail is None and self._size <= INLINE_HASH_MAX_BYTES:
            for chunk in batch:
                self._sha.update(chunk)
            done: Future[str] = Future()
            done.set_result(self._sha.hexdigest())
            return done
        return _hash_threads.submit(self._hash_after, self._tail, batch, True)

    def _hash_batch(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        size = sum(len(chunk) for chunk in batch)
        self._tail = _hash_threads.submit(self._hash_after, self._tail, batch, False)
        self._in_flight.append((self._tail, size))
        self._in_flight_bytes += size
        while self._in_flight_bytes > MAX_UNHASHED_BYTES:
            oldest, oldest_size = self._in_flight.popleft()
            oldest.result()
            self._in_flight_bytes -= oldest_size
        while self._in_flight and self._in_flight[0][0].done():
            self._in_flight_bytes -= self._in_flight.popleft()[1]

    def _hash_after(self, previous: Future[None] | None, batch: list[bytes],
                    last: bool) -> Any:
        """Hash ``batch`` once ``previous`` (the batch before it) has been hashed.

        Batches are queued in order and each waits only for one queued before it, which
        a worker has therefore already taken: the wait always ends.
        """
        joined = batch[0] if len(batch) == 1 else b"".join(batch)
        if previous is not None:
            previous.result()
        self._sha.update(joined)  # one call: the GIL is let go once for the whole batch
        return self._sha.hexdigest() if last else None
