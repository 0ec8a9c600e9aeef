"""Slow peers cannot lock out a legitimate sender, and slots are freed as peers leave.

Ten peers trickle an A-ASSOCIATE-RQ one byte per second, from ten addresses and an AE
not on the allow-list; ten more associate as an allow-listed AE (one a modality might
spoof) and trickle a P-DATA PDU. Both rates keep a connection alive far below the
node's network timeout. Meanwhile an allow-listed C-ECHO must succeed within 1 s, every
time. These tests are about the network edge, so they run on SQLite only.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from node.db.models import AuditEvent
from node.runtime import NodeServices
from tests.integration.dicom_net import (
    echoscu,
    exchange,
    receiver_settings,
    requires_dcmtk,
    running_node,
)
from tests.reliability.hostile_scu import record_figures
from tests.reliability.memory import node_process
from tests.reliability.slow_peers import Swarm, closed, p_data_tricklers, request_tricklers
from tests.reliability.test_hostile_pdus import associate_rq

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

REQUEST_TIMEOUT = 2.0
PROGRESS_TIMEOUT = 3.0
NETWORK_TIMEOUT = 60.0
"""Far above the trickle interval: the network timeout alone would never cut them."""
TRICKLE_SECONDS = 1.0
PER_AE = 3
LEGITIMATE = "ECHOSCU"
SPOOFED = "MODALITY"


NODE_DICOM: dict[str, Any] = {
    "peers": [{"ae_title": LEGITIMATE, "store": True}, {"ae_title": SPOOFED, "store": True}],
    "max_associations": 6, "max_associations_per_ae": PER_AE,
    "max_associations_per_address": 4, "max_pending_per_address": 2,
    "association_request_timeout": REQUEST_TIMEOUT, "pdu_progress_timeout": PROGRESS_TIMEOUT,
    "acse_timeout": 30, "dimse_timeout": 30, "network_timeout": NETWORK_TIMEOUT,
}
"""A node naming two AEs, with small association limits and short deadlines."""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeServices]:
    """The node of :data:`NODE_DICOM`, in this process."""
    settings = receiver_settings(tmp_path, f"sqlite:///{tmp_path / 'radnode.db'}",
                                 dicom=NODE_DICOM)
    with running_node(settings, assembly=False) as services:
        yield services


def timed_echo(port: int) -> float:
    """Seconds an allow-listed association with one C-ECHO took; it must succeed."""
    started = time.monotonic()
    result = exchange(port, [None], calling_ae=LEGITIMATE)
    elapsed = time.monotonic() - started
    assert result.statuses == [0x0000], result
    return elapsed


@requires_dcmtk
def test_twenty_slow_peers_do_not_delay_a_legitimate_echo(tmp_path: Path) -> None:
    """With 10 request tricklers and 10 P-DATA tricklers connected, each C-ECHO of an
    allow-listed AE succeeds within 1 s, for longer than every deadline involved; so does
    DCMTK's echoscu. The node, the slow peers and the echoing SCU run in three processes,
    as they would on three hosts."""
    folder = tmp_path / "node"
    folder.mkdir()
    latencies: list[float] = []
    with node_process(folder, json.dumps(NODE_DICOM)) as (_, port):
        peers = (request_tricklers(port, 10, first_host=2)
                 + p_data_tricklers(port, 10, first_host=20, calling_ae=SPOOFED.encode()))
        with Swarm(peers, TRICKLE_SECONDS):
            started = time.monotonic()
            while time.monotonic() - started < PROGRESS_TIMEOUT * 3:
                latencies.append(timed_echo(port))
                time.sleep(0.3)
            started = time.monotonic()
            dcmtk = echoscu(port, calling_ae=LEGITIMATE)
            dcmtk_seconds = time.monotonic() - started
    request_held = [s for p in peers[:10] for s in p.held_seconds]
    p_data_held = [s for p in peers[10:] for s in p.held_seconds]
    refused = sum(p.refused for p in peers[10:])
    record_figures("slow_peers_echo", {
        "slow_peers": len(peers), "echoes": len(latencies),
        "echo_seconds_max": round(max(latencies), 3),
        "echo_seconds_median": round(sorted(latencies)[len(latencies) // 2], 3),
        "dcmtk_echoscu_seconds": round(dcmtk_seconds, 3),
        "request_trickler_held_seconds_max": round(max(request_held), 2),
        "p_data_trickler_held_seconds_max": round(max(p_data_held), 2),
        "p_data_associations_refused": refused,
    })
    assert len(latencies) >= 10
    assert max(latencies) < 1.0, latencies
    assert dcmtk.returncode == 0, dcmtk.stdout + dcmtk.stderr
    assert dcmtk_seconds < 1.0
    # Each trickler was cut off by its deadline, not left to the network timeout (60 s). A
    # peer sends its first byte and notices the cut at its next tick (two ticks more), and
    # its own connect and association take their time on a loaded machine.
    slack = 2 * TRICKLE_SECONDS + 3.0
    assert request_held and max(request_held) < REQUEST_TIMEOUT + slack, request_held
    assert p_data_held and max(p_data_held) < PROGRESS_TIMEOUT + slack, p_data_held
    # The spoofed AE never held more than its share: the others were refused.
    assert refused > 0
    engine = create_engine(f"sqlite:///{folder / 'radnode.db'}")
    try:
        with Session(engine) as session:
            reasons = {e.details["reason"] for e in session.scalars(
                select(AuditEvent).where(AuditEvent.action == "association_refused"))
                if e.details}
    finally:
        engine.dispose()
    assert {"association request not completed in time", "association limit reached"} <= reasons


def _raw_association(port: int, calling_ae: str, source: str) -> tuple[socket.socket, int]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                    source_address=(source, 0))
    sock.sendall(associate_rq(calling=calling_ae.encode()))
    return sock, sock.recv(1)[0]


def test_slots_are_free_the_moment_peers_abort_or_vanish(node: NodeServices) -> None:
    """An AE at its association limit gets a new association at once after its
    associations abort (A-ABORT) or their connections close without a word."""
    port = node.listener.port
    ae = AE(ae_title=SPOOFED)
    ae.add_requested_context(Verification)
    assocs = [ae.associate("127.0.0.1", port, ae_title="RADNODE") for _ in range(PER_AE)]
    assert all(a.is_established for a in assocs)
    over = ae.associate("127.0.0.1", port, ae_title="RADNODE")
    assert over.is_rejected, "the per-AE limit did not hold"
    for assoc in assocs:
        assoc.abort()
    started = time.monotonic()
    again = ae.associate("127.0.0.1", port, ae_title="RADNODE")
    assert again.is_established
    aborted_to_served = time.monotonic() - started
    again.release()

    raw = [_raw_association(port, SPOOFED, f"127.0.0.{40 + i}") for i in range(PER_AE)]
    assert [answer for _, answer in raw] == [0x02] * PER_AE
    for sock, _ in raw:
        sock.close()  # no A-ABORT, no A-RELEASE: the connection just goes
    started = time.monotonic()
    while True:
        sock, answer = _raw_association(port, SPOOFED, "127.0.0.50")
        sock.close()
        if answer == 0x02:
            break
        assert time.monotonic() - started < 1.0, "slots still held 1 s after peers left"
        time.sleep(0.05)
    vanished_to_served = time.monotonic() - started
    record_figures("slots_after_abort", {
        "abort_to_new_association_seconds": round(aborted_to_served, 3),
        "close_to_new_association_seconds": round(vanished_to_served, 3),
        "acse_timeout_seconds": 30,
    })
    assert aborted_to_served < 1.0
    assert wait_free(node)


def wait_free(node: NodeServices) -> bool:
    """Every slot is free within 1 s."""
    deadline = time.monotonic() + 1.0
    while node.listener.associations_in_use and time.monotonic() < deadline:
        time.sleep(0.05)
    return node.listener.associations_in_use == 0


def test_pending_connections_per_address_are_limited(node: NodeServices) -> None:
    """From one address, connections beyond the pending limit are closed at once;
    the allow-listed AE from another address is served meanwhile."""
    port = node.listener.port
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5,
                                      source_address=("127.0.0.60", 0)) for _ in range(6)]
    try:
        for sock in socks:
            sock.sendall(b"\x01")
        time.sleep(0.5)
        cut = sum(closed(sock) for sock in socks)
        assert timed_echo(port) < 1.0
    finally:
        for sock in socks:
            sock.close()
    assert cut == 4, cut
