"""Admission counts shared by listener processes: limits over every row, keyed buckets,
rows of ended processes, and a lock that a killed process cannot keep."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest

from node.dicom.admission import AdmissionControl
from node.dicom.shared_admission import SharedAdmissionCounts

LIMITS = {"max_total": 3, "max_per_address": 2, "max_per_ae": 2}


@pytest.fixture
def table() -> Iterator[SharedAdmissionCounts]:
    counts = SharedAdmissionCounts.create(2)
    yield counts
    counts.close()


def test_slot_limits_hold_for_every_row_together(table: SharedAdmissionCounts) -> None:
    other = table.open_row(1)
    assert table.admit("10.0.0.1", "A", **LIMITS)
    assert other.admit("10.0.0.2", "B", **LIMITS)
    assert other.admit("10.0.0.3", "C", **LIMITS)
    # Row 0 holds one slot of three: the limit is reached only counting row 1's two.
    assert not table.admit("10.0.0.4", "D", **LIMITS)
    other.release("10.0.0.2", "B")
    assert table.admit("10.0.0.4", "D", **LIMITS)
    assert table.slots_by_row() == [2, 1]
    assert table.refused_by_row() == [1, 0]
    other.close()


def test_per_address_and_per_ae_limits_hold_across_rows(
        table: SharedAdmissionCounts) -> None:
    other = table.open_row(1)
    limits = {"max_total": 10, "max_per_address": 2, "max_per_ae": 2}
    assert table.admit("10.0.0.1", "A", **limits)
    assert other.admit("10.0.0.1", "B", **limits)
    assert not table.admit("10.0.0.1", "C", **limits)  # address: 1 here + 1 there
    assert other.admit("10.0.0.2", "A", **limits)
    assert not table.admit("10.0.0.3", "A", **limits)  # AE: 1 here + 1 there
    assert table.admit("10.0.0.3", "D", **limits)
    other.close()


def test_pending_limits_hold_across_rows(table: SharedAdmissionCounts) -> None:
    other = table.open_row(1)
    assert table.open_pending("10.0.0.1", 3, 2)
    assert other.open_pending("10.0.0.1", 3, 2)
    assert not table.open_pending("10.0.0.1", 3, 2)
    assert other.open_pending("10.0.0.2", 3, 2)
    assert not table.open_pending("10.0.0.3", 3, 2)  # three pending in all
    other.close_pending("10.0.0.1")
    assert table.open_pending("10.0.0.1", 3, 2)
    other.close()


def test_keys_sharing_a_bucket_get_a_stricter_limit_never_a_looser_one() -> None:
    counts = SharedAdmissionCounts.create(1, buckets=1)  # every key in one bucket
    limits = {"max_total": 10, "max_per_address": 2, "max_per_ae": 10}
    assert counts.admit("10.0.0.1", "A", **limits)
    assert counts.admit("10.0.0.2", "B", **limits)
    assert not counts.admit("10.0.0.3", "C", **limits)  # two addresses, one count
    counts.close()


def test_buckets_depend_on_a_secret_drawn_at_creation() -> None:
    first, second = SharedAdmissionCounts.create(1), SharedAdmissionCounts.create(1)
    addresses = [f"10.0.{i}.{j}" for i in range(4) for j in range(16)]
    assert [first._bucket(b"address", a) for a in addresses] != [
        second._bucket(b"address", a) for a in addresses]
    # The same table always puts a key in the same bucket.
    assert first._bucket(b"address", "10.0.0.1") == first._bucket(b"address", "10.0.0.1")
    first.close()
    second.close()


def test_a_cleared_row_frees_the_slots_of_its_ended_process(
        table: SharedAdmissionCounts) -> None:
    other = table.open_row(1)
    for n in range(3):
        assert other.admit(f"10.0.0.{n}", f"AE{n}", **LIMITS)
    assert not table.admit("10.0.1.1", "X", **LIMITS)
    table.clear_row(1)
    assert table.in_use() == 0
    assert table.admit("10.0.1.1", "X", **LIMITS)
    other.close()


def test_admission_control_counts_in_the_shared_table(table: SharedAdmissionCounts) -> None:
    other = table.open_row(1)
    assert other.admit("10.0.0.9", "ELSEWHERE", **LIMITS)
    admission = AdmissionControl(3, 2, 2, 4, 2, shared=table)
    first, second = admission.admit("10.0.0.1", "A"), admission.admit("10.0.0.2", "B")
    assert first is not None and second is not None
    assert admission.admit("10.0.0.3", "C") is None  # 2 here + 1 in the other row
    first.release()
    first.release()  # a second release frees nothing more
    assert table.slots_by_row() == [1, 1]
    assert admission.admit("10.0.0.3", "C") is not None
    other.close()


def _hold_slot_and_lock(handle: Any, ready: Connection) -> None:
    counts: SharedAdmissionCounts = handle
    assert counts.admit("10.0.0.7", "CHILD", **LIMITS)
    with counts.holding_lock():
        ready.send(os.getpid())
        threading.Event().wait()


def test_a_process_killed_holding_the_lock_does_not_block_the_others(
        table: SharedAdmissionCounts) -> None:
    context = multiprocessing.get_context("spawn")
    reader, writer = context.Pipe(duplex=False)
    child = context.Process(target=_hold_slot_and_lock, args=(table.for_row(1), writer))
    child.start()
    writer.close()
    assert reader.poll(30), "the child did not start"
    reader.recv()
    blocked = threading.Thread(target=table.in_use, daemon=True)
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive(), "the child's lock did not exclude this process"
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join(10)
    blocked.join(5)
    assert not blocked.is_alive(), "the killed process's lock was not released"
    assert table.slots_by_row() == [0, 1]
    table.clear_row(1)
    assert table.slots_by_row() == [0, 0]
