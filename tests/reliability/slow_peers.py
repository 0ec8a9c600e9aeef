"""Peers that hold connections open by sending one byte at a time, over raw sockets.

Each peer connects from its own loopback address (127.0.0.N), so per-address limits
alone cannot stop them. A peer the node cuts off connects again at once: the pressure
lasts as long as the swarm runs.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from tests.reliability.test_hostile_pdus import associate_rq, p_data, pdv


def closed(sock: socket.socket) -> bool:
    """Whether the node has closed (or reset) the connection; answers are discarded."""
    try:
        while select.select([sock], [], [], 0)[0]:
            if not sock.recv(65536):
                return True
    except OSError:
        return True
    return False


def _read_pdu_type(sock: socket.socket, timeout: float) -> int | None:
    sock.settimeout(timeout)
    data = bytearray()
    try:
        while len(data) < 6:
            chunk = sock.recv(6 - len(data))
            if not chunk:
                return None
            data.extend(chunk)
        length = struct.unpack(">L", data[2:6])[0]
        remaining = length
        while remaining:
            chunk = sock.recv(min(remaining, 65536))
            if not chunk:
                return None
            remaining -= len(chunk)
    except OSError:
        return None
    return int(data[0])


@dataclass
class SlowPeer:
    """One connection trickling ``payload``, optionally after associating first."""

    port: int
    source: str
    payload: bytes
    associate_as: bytes | None = None
    """Calling AE title of a complete A-ASSOCIATE-RQ sent before the trickle."""
    sock: socket.socket | None = None
    sent: int = 0
    connected_at: float = 0.0
    held_seconds: list[float] = field(default_factory=list)
    """How long each connection lasted before the node cut it."""
    refused: int = 0
    """Association requests the node rejected (a limit reached)."""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                        source_address=(self.source, 0))
        self.connected_at = time.monotonic()
        self.sent = 0
        if self.associate_as is not None:
            sock.sendall(associate_rq(calling=self.associate_as))
            if _read_pdu_type(sock, 5) != 0x02:
                self.refused += 1
                sock.close()
                return
        sock.setblocking(True)
        sock.settimeout(5)
        self.sock = sock

    def step(self) -> None:
        """Send the next byte; reconnect if the node has cut the connection."""
        if self.sock is not None and closed(self.sock):
            self.held_seconds.append(time.monotonic() - self.connected_at)
            self.sock.close()
            self.sock = None
        if self.sock is None:
            with contextlib.suppress(OSError):
                self.connect()
            return
        if self.sent < len(self.payload):
            with contextlib.suppress(OSError):
                self.sock.send(self.payload[self.sent:self.sent + 1])
                self.sent += 1

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _run_swarm(peers: list[SlowPeer], interval: float, ready: Any, stop: Any,
               results: Any) -> None:
    for peer in peers:
        with contextlib.suppress(OSError):
            peer.connect()
    ready.set()
    while not stop.wait(interval):
        for peer in peers:
            peer.step()
    for peer in peers:
        peer.close()
    results.put([(p.held_seconds, p.refused) for p in peers])


class Swarm:
    """Slow peers, each sending one byte every ``interval`` seconds, from a separate
    process (so that they compete with the node for the CPU, not for its GIL)."""

    def __init__(self, peers: list[SlowPeer], interval: float) -> None:
        self.peers = peers
        self.interval = interval
        context = multiprocessing.get_context("spawn")
        self._ready = context.Event()
        self._stop = context.Event()
        self._results: Any = context.Queue()
        self._process = context.Process(
            target=_run_swarm, name="slow-peers", daemon=True,
            args=(peers, interval, self._ready, self._stop, self._results))

    def __enter__(self) -> Swarm:
        self._process.start()
        assert self._ready.wait(60), "the slow peers did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        outcome = self._results.get(timeout=30)
        self._process.join(10)
        for peer, (held, refused) in zip(self.peers, outcome, strict=True):
            peer.held_seconds, peer.refused = held, refused


def request_tricklers(port: int, count: int, *, first_host: int,
                      calling_ae: bytes = b"STRANGER") -> list[SlowPeer]:
    """Peers trickling an A-ASSOCIATE-RQ, from 127.0.0.<first_host> onwards."""
    return [SlowPeer(port, f"127.0.0.{first_host + i}", associate_rq(calling=calling_ae))
            for i in range(count)]


def p_data_tricklers(port: int, count: int, *, first_host: int,
                     calling_ae: bytes) -> list[SlowPeer]:
    """Peers that associate as ``calling_ae``, then trickle a P-DATA PDU."""
    payload = p_data(pdv(1, 3, bytes(64)))
    return [SlowPeer(port, f"127.0.0.{first_host + i}", payload, associate_as=calling_ae)
            for i in range(count)]
