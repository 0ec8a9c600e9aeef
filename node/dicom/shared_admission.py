"""Admission counts shared by the listener processes of one node.

With ``[dicom] listener_processes`` above 1, several processes accept connections on the
same port, and the limits of :mod:`node.dicom.admission` (``max_associations``,
``max_pending``, per address, per calling AE) must hold for the node as a whole. The
counts live in one anonymous shared file (``memfd``), mapped by every listener process:

* each process has a *row* of its own and only ever changes that row; a limit is checked
  against the sum of the rows. A process that dies cannot leave counts behind in another
  process's row, and the main process zeroes the row of a listener process that died
  before it starts its replacement;
* per-address and per-AE counts sit in fixed tables of :data:`BUCKETS` entries, at the
  index given by a keyed hash (BLAKE2b with a secret drawn when the node starts), so that
  a peer cannot choose addresses or AE titles that share an entry with another peer's.
  Two keys that do share an entry share its count: the limit for each becomes stricter,
  never looser (with 65,536 entries, a peer shares its entry with any of 95 others with
  a probability of about 0.15 %);
* every check-and-count happens under a thread lock and an exclusive ``flock`` on the
  shared file, which the kernel releases when a process dies, so a process killed
  inside the critical section does not block the others.

Only counts are shared: no address or AE title is written to the table.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import reduction
from typing import Any

BUCKETS = 1 << 16
"""Entries of each per-key table (per-address pending, per-address slots, per-AE slots)."""

_PENDING_TOTAL, _SLOTS_TOTAL, _ADMITTED_TOTAL, _REFUSED_TOTAL = range(4)
_HEADER = 8  # the counters above, and room for more
_PENDING_BY_ADDRESS, _SLOTS_BY_ADDRESS, _SLOTS_BY_AE = range(3)
_INT_BYTES = 4


@dataclass(frozen=True)
class _Layout:
    rows: int
    buckets: int

    @property
    def row_size(self) -> int:
        return _HEADER + 3 * self.buckets

    @property
    def total_bytes(self) -> int:
        return self.rows * self.row_size * _INT_BYTES


def _rebuild(inherited: Any, rows: int, buckets: int, secret: bytes,
             row: int) -> SharedAdmissionCounts:
    """Open the table in a listener process from the descriptor passed down to it.

    The inherited descriptor shares its open file description (and so its ``flock``)
    with the main process; the table is opened again through ``/proc/self/fd`` to get a
    description, and a lock, of its own.
    """
    passed = inherited.detach()
    try:
        fd = os.open(f"/proc/self/fd/{passed}", os.O_RDWR | os.O_CLOEXEC)
    finally:
        os.close(passed)
    return SharedAdmissionCounts(fd, _Layout(rows, buckets), secret, row)


class SharedAdmissionCounts:
    """Pending connections and association slots of every listener process.

    Build it with :meth:`create` in the main process (which uses row 0); hand
    :meth:`for_row` to a listener process started with the ``spawn`` method, which then
    holds a table of its own mapping the same memory.

    Parameters
    ----------
    fd
        The shared file, owned by this object.
    layout
        Rows and buckets.
    secret
        The key of the bucket hash.
    row
        The row this process counts in.
    """

    def __init__(self, fd: int, layout: _Layout, secret: bytes, row: int) -> None:
        if not 0 <= row < layout.rows:
            raise ValueError(f"row {row} outside 0..{layout.rows - 1}")
        self._fd = fd
        self._layout = layout
        self._secret = secret
        self.row = row
        self._map = mmap.mmap(fd, layout.total_bytes)
        self._counts = memoryview(self._map).cast("i")
        self._thread_lock = threading.Lock()

    @classmethod
    def create(cls, rows: int, buckets: int = BUCKETS) -> SharedAdmissionCounts:
        """A zeroed table for ``rows`` listener processes, with a fresh secret; row 0."""
        if rows < 1 or buckets < 1:
            raise ValueError("rows and buckets must be positive")
        layout = _Layout(rows, buckets)
        fd = os.memfd_create("radnode-admission", os.MFD_CLOEXEC)
        os.ftruncate(fd, layout.total_bytes)
        return cls(fd, layout, secrets.token_bytes(32), 0)

    def open_row(self, row: int) -> SharedAdmissionCounts:
        """The same table counted in ``row``, with a lock of its own, in this process."""
        if not 0 <= row < self._layout.rows:
            raise ValueError(f"row {row} outside 0..{self._layout.rows - 1}")
        fd = os.open(f"/proc/self/fd/{self._fd}", os.O_RDWR | os.O_CLOEXEC)
        return SharedAdmissionCounts(fd, self._layout, self._secret, row)

    def for_row(self, row: int) -> _RowHandle:
        """What a listener process started with ``spawn`` unpickles into its table."""
        if not 0 < row < self._layout.rows:
            raise ValueError(f"row {row} outside 1..{self._layout.rows - 1}")
        return _RowHandle(self, row)

    @property
    def rows(self) -> int:
        """Listener processes the table counts for."""
        return self._layout.rows

    # -- the lock and the table -----------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _bucket(self, kind: bytes, key: str) -> int:
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8,
                                 key=self._secret, person=kind).digest()
        return int.from_bytes(digest, "big") % self._layout.buckets

    def _index(self, table: int, bucket: int, row: int | None = None) -> int:
        return ((self.row if row is None else row) * self._layout.row_size
                + _HEADER + table * self._layout.buckets + bucket)

    def _header(self, counter: int, row: int | None = None) -> int:
        return (self.row if row is None else row) * self._layout.row_size + counter

    def _sum(self, offset_in_row: int) -> int:
        size = self._layout.row_size
        return sum(self._counts[r * size + offset_in_row] for r in range(self._layout.rows))

    def _sum_bucket(self, table: int, bucket: int) -> int:
        return self._sum(_HEADER + table * self._layout.buckets + bucket)

    # -- pending connections --------------------------------------------------------------

    def open_pending(self, address: str, max_total: int, max_per_address: int) -> bool:
        """Count a new connection from ``address`` unless a pending limit is reached."""
        bucket = self._bucket(b"pending", address)
        with self._locked():
            if (self._sum(_PENDING_TOTAL) >= max_total
                    or self._sum_bucket(_PENDING_BY_ADDRESS, bucket) >= max_per_address):
                return False
            self._counts[self._header(_PENDING_TOTAL)] += 1
            self._counts[self._index(_PENDING_BY_ADDRESS, bucket)] += 1
            return True

    def close_pending(self, address: str) -> None:
        """A pending connection counted by :meth:`open_pending` has moved on or gone."""
        bucket = self._bucket(b"pending", address)
        with self._locked():
            self._counts[self._header(_PENDING_TOTAL)] -= 1
            self._counts[self._index(_PENDING_BY_ADDRESS, bucket)] -= 1

    # -- association slots ----------------------------------------------------------------

    def admit(self, address: str, calling_ae: str, max_total: int, max_per_address: int,
              max_per_ae: int) -> bool:
        """Take a slot for an association unless a limit is reached."""
        by_address = self._bucket(b"address", address)
        by_ae = self._bucket(b"ae", calling_ae)
        with self._locked():
            if (self._sum(_SLOTS_TOTAL) >= max_total
                    or self._sum_bucket(_SLOTS_BY_ADDRESS, by_address) >= max_per_address
                    or self._sum_bucket(_SLOTS_BY_AE, by_ae) >= max_per_ae):
                self._counts[self._header(_REFUSED_TOTAL)] += 1
                return False
            self._counts[self._header(_SLOTS_TOTAL)] += 1
            self._counts[self._header(_ADMITTED_TOTAL)] += 1
            self._counts[self._index(_SLOTS_BY_ADDRESS, by_address)] += 1
            self._counts[self._index(_SLOTS_BY_AE, by_ae)] += 1
            return True

    def release(self, address: str, calling_ae: str) -> None:
        """Free a slot taken by :meth:`admit` in this process."""
        by_address = self._bucket(b"address", address)
        by_ae = self._bucket(b"ae", calling_ae)
        with self._locked():
            self._counts[self._header(_SLOTS_TOTAL)] -= 1
            self._counts[self._index(_SLOTS_BY_ADDRESS, by_address)] -= 1
            self._counts[self._index(_SLOTS_BY_AE, by_ae)] -= 1

    # -- the main process's view ----------------------------------------------------------

    def clear_row(self, row: int) -> None:
        """Forget every count of ``row``, whose process has ended (its slots are free)."""
        start = row * self._layout.row_size
        with self._locked():
            self._counts[start:start + self._layout.row_size] = memoryview(
                bytes(self._layout.row_size * _INT_BYTES)).cast("i")

    def in_use(self) -> int:
        """Association slots held now by every listener process together."""
        with self._locked():
            return self._sum(_SLOTS_TOTAL)

    def admitted_by_row(self) -> list[int]:
        """Associations each listener process has admitted since its row was cleared."""
        with self._locked():
            return [self._counts[self._header(_ADMITTED_TOTAL, r)] for r in range(self.rows)]

    def refused_by_row(self) -> list[int]:
        """Associations each listener process has refused at a slot limit."""
        with self._locked():
            return [self._counts[self._header(_REFUSED_TOTAL, r)] for r in range(self.rows)]

    def slots_by_row(self) -> list[int]:
        """Association slots each listener process holds now."""
        with self._locked():
            return [self._counts[self._header(_SLOTS_TOTAL, r)] for r in range(self.rows)]

    @contextlib.contextmanager
    def holding_lock(self) -> Iterator[None]:
        """Hold the table's lock (for tests of what a process dying with it does)."""
        with self._locked():
            yield

    def close(self) -> None:
        """Unmap the table and close the file."""
        self._counts.release()
        self._map.close()
        os.close(self._fd)


class _RowHandle:
    """A table and a row, pickled for a ``spawn``-ed process as its descriptor."""

    def __init__(self, counts: SharedAdmissionCounts, row: int) -> None:
        self.counts = counts
        self.row = row

    def __reduce__(self) -> tuple[Any, ...]:
        counts = self.counts
        # DupFd passes the descriptor to the process being spawned (as multiprocessing's
        # own shared memory does); it is only valid while that process starts.
        return (_rebuild, (reduction.DupFd(counts._fd), counts._layout.rows,
                           counts._layout.buckets, counts._secret, self.row))
