"""Several listener processes on one DICOM port (``[dicom] listener_processes = 2``): every
instance stored once and exactly, associations in both processes, the node-wide
association limit, restarts of a killed process, and no process left behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from pynetdicom.association import Association
from sqlalchemy import select

from node.db.models import Instance
from node.dicom.shared_admission import SharedAdmissionCounts
from node.listener_processes import ListenerProcessError, ListenerProcesses
from node.runtime import NodeServices
from tests.conftest import REPO_ROOT
from tests.dicom_factory import make_cxr_dataset, write_dataset
from tests.integration.dicom_files import read_part10, stored_files
from tests.integration.dicom_net import (
    echoscu,
    make_scu,
    receiver_settings,
    requires_dcmtk,
    running_node,
    store_successes,
    storescu,
    wait_for,
)
from tests.process_tree import descendants

pytestmark = [pytest.mark.dcmtk, requires_dcmtk]

RESTART_SECONDS = 20.0
"""Bound on a killed listener process being listening again (start-up of a fresh
interpreter on a busy two-core machine included)."""
STOP_BOUND = 20.0
"""Bound on listener processes ending once the main process is gone."""


def _settings(tmp_path: Path, database_url: str, **dicom: Any) -> Any:
    return receiver_settings(tmp_path, database_url, assembly={"quiet_seconds": 600},
                             dicom={"listener_processes": 2, **dicom})


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[NodeServices]:
    """A node with one listener process beside the main one, on the parametrised database."""
    with running_node(_settings(tmp_path, database_url)) as services:
        yield services


def _admitted(node: NodeServices) -> list[int]:
    assert node.listener_processes is not None
    return node.listener_processes.admission.admitted_by_row()


def _echo_until_both_processes_served(node: NodeServices, attempts: int = 64) -> list[int]:
    """Echo until each process has admitted an association: the kernel picks a socket per
    connection, so 64 attempts all landing on one of two is a 2**-63 chance."""
    for _ in range(attempts):
        if min(_admitted(node)) > 0:
            break
        assert echoscu(node.listener.port).returncode == 0
    return _admitted(node)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to collect it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_concurrent_senders_store_every_instance_once_and_exactly(
        node: NodeServices, tmp_path: Path) -> None:
    """Six storescu senders at once, two studies between them and one instance sent by
    every sender: one row and one file per instance, each holding the bytes sent."""
    studies = [generate_uid(), generate_uid()]
    shared = write_dataset(make_cxr_dataset(study_uid=studies[0], rows=384, cols=384),
                           tmp_path / "shared.dcm")
    batches: list[list[Path]] = []
    for sender in range(6):
        batch = [shared]
        for n in range(3):
            dataset = make_cxr_dataset(study_uid=studies[sender % 2], rows=384, cols=384,
                                       instance_number=sender * 10 + n)
            batch.append(write_dataset(dataset, tmp_path / f"s{sender}-{n}.dcm"))
        batches.append(batch)
    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        results = list(pool.map(
            lambda pair: storescu(node.listener.port, pair[1], calling_ae=f"SENDER{pair[0]}"),
            enumerate(batches)))
    assert [store_successes(r) for r in results] == [4] * 6, results[0].stdout[-2000:]
    sent = {str(read_part10(p)[0].MediaStorageSOPInstanceUID): p
            for batch in batches for p in batch}
    assert len(sent) == 1 + 6 * 3
    with node.database.sessions() as session:
        rows = session.scalars(select(Instance)).all()
    assert sorted(r.sop_instance_uid for r in rows) == sorted(sent)
    for row in rows:
        assert read_part10(node.store.absolute(row.path))[1] == read_part10(
            sent[row.sop_instance_uid])[1]
    assert sorted(stored_files(node.store.root)) == sorted(
        node.store.absolute(r.path) for r in rows)
    admitted = _echo_until_both_processes_served(node)
    assert min(admitted) > 0, f"every association went to one process: {admitted}"


def _hold(port: int, calling_ae: str) -> Association:
    """Open an association and keep it open (or be refused)."""
    return make_scu(calling_ae).associate("127.0.0.1", port, ae_title="RADNODE")


def test_max_associations_holds_for_both_processes_together(
        tmp_path: Path, database_url: str) -> None:
    """With ``max_associations = 2``, associations held open from several connections
    and AE titles: two are established in all, and once both processes have met the
    limit every further request is rejected 2/3/2 (transient, local limit exceeded)."""
    settings = _settings(tmp_path, database_url, max_associations=2)
    held: list[Association] = []
    rejections: list[tuple[int, int, int]] = []
    with running_node(settings, assembly=False) as node:
        assert node.listener_processes is not None
        admission = node.listener_processes.admission
        try:
            for attempt in range(48):
                if len(held) >= 2 and min(admission.refused_by_row()) > 0:
                    break
                assoc = _hold(node.listener.port, f"PEER{attempt % 5}")
                if assoc.is_established:
                    held.append(assoc)
                    continue
                reject = assoc.acceptor.primitive
                assert assoc.is_rejected and reject is not None, "not established, not rejected"
                rejections.append((reject.result, reject.result_source, reject.diagnostic))
            refused = admission.refused_by_row()
            slots = admission.slots_by_row()
        finally:
            for assoc in held:
                assoc.release()
    assert len(held) == 2
    assert min(refused) > 0, f"requests did not reach both processes: {refused}"
    # A process holding fewer than two slots itself refused: the limit counts both.
    assert min(slots) < 2, slots
    assert rejections and set(rejections) == {(0x02, 0x03, 0x02)}


def test_a_killed_listener_process_is_restarted_while_the_port_answers(
        node: NodeServices) -> None:
    assert node.listener_processes is not None
    [(row, pid)] = node.listener_processes.pids.items()
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    answered = 0
    while True:
        assert echoscu(node.listener.port).returncode == 0, "the port stopped answering"
        answered += 1
        restarted = node.listener_processes.pids.get(row)
        if restarted is not None and restarted != pid and node.listener_processes.restarts:
            break
        assert time.monotonic() - started < RESTART_SECONDS, "not restarted in time"
    assert not _alive(pid)
    # The new process takes associations: its row was cleared when the old one died.
    admitted = wait_for(lambda: _echo_until_both_processes_served(node)[row] > 0,
                        timeout=RESTART_SECONDS, what="the restarted process to serve")
    assert admitted and answered >= 1


def test_stop_leaves_no_listener_process(tmp_path: Path, database_url: str) -> None:
    services = NodeServices.build(_settings(tmp_path, database_url))
    services.start()
    assert services.listener_processes is not None
    pids = list(services.listener_processes.pids.values())
    assert pids and all(_alive(pid) for pid in pids)
    started = time.monotonic()
    services.stop()
    assert time.monotonic() - started < 15
    assert not any(_alive(pid) for pid in pids)


def test_a_listener_process_that_cannot_listen_fails_the_start(
        tmp_path: Path, database_url: str) -> None:
    """A port held by a socket without ``SO_REUSEPORT``: the process cannot bind, the
    start fails naming why, and no process is left."""
    settings = _settings(tmp_path, database_url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        counts = SharedAdmissionCounts.create(2)
        processes = ListenerProcesses(settings, counts)
        with pytest.raises(ListenerProcessError, match="Address already in use"):
            processes.start(taken.getsockname()[1])
    assert processes.pids == {}
    assert not [p for p in multiprocessing.active_children()
                if p.name.startswith("radnode-listener")]


def test_listener_processes_end_with_the_main_process(tmp_path: Path) -> None:
    """The main process killed outright: its listener processes notice and end."""
    node = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.node_process", str(tmp_path),
         '{"listener_processes": 2}'],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert node.stdout is not None
        line = node.stdout.readline()
        assert line.startswith("PORT "), line
        children = descendants(node.pid)
        assert children, "no listener process"
        node.kill()
        node.wait(10)
        wait_for(lambda: not any(_alive(pid) for pid in children), timeout=STOP_BOUND,
                 what="the listener processes to end")
    finally:
        if node.poll() is None:
            node.kill()
            node.wait(10)
