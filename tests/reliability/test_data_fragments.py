"""C-STORE data set fragments, well-formed and hostile, over raw sockets: the listener's
shortcut for data fragments (``node.dicom.pdata_fast_path``) answers every layout of
PDVs exactly as pynetdicom's own reading does.

Each case is an association whose C-STORE data set arrives in some layout of P-DATA-TF
PDUs and PDVs: one or several fragments per PDU, the last fragment in the middle of a
PDU, fragments of another context or command fragments in the middle of the data set,
PDV lengths that do not fit, an abort or a stall half-way. Each is sent twice to the
same node (each time a new instance of the same size), once with the shortcut and once
with it switched off, and both must end the same way: the same PDUs back (byte for byte,
the instance's UID aside), the instance stored exactly as sent in both or in neither, no
spool file left behind; a stall is cut within the PDU progress timeout either way.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.dsutils import encode

from node.dicom import pdata_fast_path, upstream_workarounds
from node.runtime import NodeServices
from tests.dicom_factory import DX_FOR_PRESENTATION, make_cxr_dataset
from tests.integration.dicom_files import stored_files, temporary_files
from tests.integration.dicom_net import receiver_settings, running_node
from tests.reliability.test_hostile_pdus import (
    EXPLICIT_LE,
    Peer,
    associate_rq,
    p_data,
    pdu,
    pdv,
    presentation_context,
)

pytestmark = [pytest.mark.reliability]

TIMEOUT = 2.0
"""The node's timeouts here (ACSE, DIMSE, network, PDU progress), in seconds."""
CONTEXT = 1
OTHER_CONTEXT = 3
FRAGMENT = 1000


def command_set(sop_instance_uid: str, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set, Implicit VR Little Endian, with its group length."""
    command = Dataset()
    command.AffectedSOPClassUID = DX_FOR_PRESENTATION
    command.CommandField = 0x0001
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = sop_instance_uid
    body = encode(command, True, True)
    assert body is not None
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def encoded_dataset(seed: int) -> tuple[str, bytes]:
    """A small DX instance as the data set of a C-STORE (Explicit VR Little Endian); its
    SOP Instance UID has the same length whatever the seed."""
    dataset = make_cxr_dataset(rows=96, cols=96, seed=seed,
                               sop_uid=f"1.2.826.0.1.3680043.8.498.{10**11 + seed}")
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, dataset)
    return str(dataset.SOPInstanceUID), buffer.getvalue()


def fragments(data: bytes, size: int = FRAGMENT) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def data_pdvs(data: bytes, *, context_id: int = CONTEXT) -> list[bytes]:
    """The data set as PDVs of ``FRAGMENT`` bytes, the last one flagged as such."""
    parts = fragments(data)
    return [pdv(context_id, 2 if i == len(parts) - 1 else 0, part)
            for i, part in enumerate(parts)]


def one_per_pdu(pdvs: list[bytes]) -> bytes:
    return b"".join(p_data(item) for item in pdvs)


def grouped(pdvs: list[bytes], size: int) -> bytes:
    return b"".join(p_data(b"".join(pdvs[i:i + size])) for i in range(0, len(pdvs), size))


@dataclass
class Case:
    """What the peer sends after the association is accepted."""

    send: Callable[[Peer, str, bytes], None]
    stores: bool
    """Whether the instance ends up stored."""
    stall: bool = False


def _store(layout: Callable[[list[bytes]], bytes]) -> Callable[[Peer, str, bytes], None]:
    def send(peer: Peer, uid: str, data: bytes) -> None:
        peer.send(p_data(pdv(CONTEXT, 3, command_set(uid))) + layout(data_pdvs(data)))
        peer.send(pdu(0x05, bytes(4)))  # A-RELEASE-RQ once the response is in
    return send


def _interrupted(middle: Callable[[bytes], bytes], *, then_rest: bool = True
                 ) -> Callable[[Peer, str, bytes], None]:
    """Half the data fragments, then ``middle(data)``, then (maybe) the rest."""
    def send(peer: Peer, uid: str, data: bytes) -> None:
        pdvs = data_pdvs(data)
        half = len(pdvs) // 2
        peer.send(p_data(pdv(CONTEXT, 3, command_set(uid))) + one_per_pdu(pdvs[:half]))
        peer.send(middle(data))
        if then_rest:
            peer.send(one_per_pdu(pdvs[half:]) + pdu(0x05, bytes(4)))
    return send


CASES: dict[str, Case] = {
    "one_fragment_per_pdu": Case(_store(one_per_pdu), stores=True),
    "four_fragments_per_pdu": Case(_store(lambda pdvs: grouped(pdvs, 4)), stores=True),
    "last_fragment_in_the_middle_of_a_pdu": Case(
        _store(lambda pdvs: one_per_pdu(pdvs[:-3]) + p_data(b"".join(pdvs[-3:]))),
        stores=True),
    "last_fragment_and_the_next_command_in_one_pdu": Case(
        _store(lambda pdvs: one_per_pdu(pdvs[:-1])
               + p_data(pdvs[-1] + pdv(CONTEXT, 3, command_set("1.2.3.4", 2)))),
        stores=True),
    # pynetdicom adds it to the data set, which then no longer parses: refused
    "fragment_of_another_context": Case(
        _interrupted(lambda data: p_data(pdv(OTHER_CONTEXT, 0, b"\x00" * 16))), stores=False),
    # pynetdicom adds it to the (already decoded) command set: the data set is intact
    "command_fragment_in_the_data_set": Case(
        _interrupted(lambda data: p_data(pdv(CONTEXT, 1, b"\x00" * 16))), stores=True),
    "pdv_longer_than_its_pdu": Case(
        _interrupted(lambda data: p_data(pdv(CONTEXT, 0, b"\x00" * 16, length=5000))),
        stores=False),
    "pdv_too_short_for_its_header": Case(
        _interrupted(lambda data: p_data(pdv(CONTEXT, 0, b"", length=1) + b"\x00")),
        stores=False),
    "empty_p_data_in_the_data_set": Case(_interrupted(lambda data: p_data(b"")),
                                         stores=True),
    "pdu_cut_inside_its_last_pdv": Case(
        _interrupted(lambda data: p_data(pdv(CONTEXT, 0, b"\x00" * 64))[:-10]
                     + p_data(pdv(CONTEXT, 0, b"\x00" * 64))), stores=False),
    "abort_in_the_middle": Case(
        _interrupted(lambda data: pdu(0x07, bytes(4)), then_rest=False), stores=False),
    "stall_in_the_middle_of_a_pdu": Case(
        _interrupted(lambda data: p_data(pdv(CONTEXT, 0, b"\x00" * 5000))[:3000],
                     then_rest=False), stores=False, stall=True),
}


@dataclass
class Outcome:
    answers: list[bytes]
    """Every PDU the node sent, the instance's UID in them replaced by ``<uid>``."""
    seconds: float
    stored: list[bool]
    """For each file stored: whether it ends with the data set exactly as sent."""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeServices]:
    settings = receiver_settings(
        tmp_path, f"sqlite:///{tmp_path / 'radnode.db'}",
        dicom={"acse_timeout": TIMEOUT, "dimse_timeout": TIMEOUT, "network_timeout": TIMEOUT,
               "association_request_timeout": TIMEOUT, "pdu_progress_timeout": TIMEOUT},
    )
    with running_node(settings, assembly=False) as services:
        yield services


def run_case(node: NodeServices, case: Case, seed: int) -> Outcome:
    uid, data = encoded_dataset(seed)
    before = set(stored_files(node.store.root))
    peer = Peer(node.listener.port)
    try:
        peer.send(associate_rq(contexts=presentation_context(CONTEXT, DX_FOR_PRESENTATION.encode(),
                                                             EXPLICIT_LE)
                               + presentation_context(OTHER_CONTEXT, DX_FOR_PRESENTATION.encode(),
                                                      EXPLICIT_LE)))
        accepted = read_raw_pdu(peer)
        assert accepted is not None and accepted[0] == 0x02, "the association was not accepted"
        started = time.monotonic()
        case.send(peer, uid, data)
        answers = [accepted]
        while (answer := read_raw_pdu(peer)) is not None:
            answers.append(answer.replace(uid.encode(), b"<uid>"))
        seconds = time.monotonic() - started
    finally:
        peer.close()
    deadline = time.monotonic() + 10
    while list(node.store.spool_folder().iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the spool file goes once pynetdicom's handler or abort is done
    assert list(node.store.spool_folder().iterdir()) == []
    assert temporary_files(node.store.root) == []
    stored = [path.read_bytes().endswith(data)
              for path in sorted(set(stored_files(node.store.root)) - before)]
    return Outcome(answers, seconds, stored)


def read_raw_pdu(peer: Peer) -> bytes | None:
    """The next whole PDU the node sends, or ``None`` once it has closed."""
    while True:
        if len(peer.received) >= 6:
            length = struct.unpack(">L", peer.received[2:6])[0]
            if len(peer.received) >= 6 + length:
                whole = bytes(peer.received[:6 + length])
                del peer.received[:6 + length]
                return whole
        try:
            chunk = peer.sock.recv(65536)
        except OSError:
            return None
        if not chunk:
            return None
        peer.received.extend(chunk)


@pytest.mark.parametrize("name", sorted(CASES))
def test_data_fragments_end_as_without_the_shortcut(
        node: NodeServices, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    case = CASES[name]
    written: list[int] = []
    original_write = pdata_fast_path._write_fragments

    def counting(body: memoryview, spool: Any, context_id: int) -> bool:
        done = original_write(body, spool, context_id)
        written.append(int(done))
        return done

    monkeypatch.setattr(pdata_fast_path, "_write_fragments", counting)
    with_shortcut = run_case(node, case, seed=1)
    monkeypatch.setattr(upstream_workarounds, "read_data_fragments", lambda dul: False)
    without = run_case(node, case, seed=2)

    assert sum(written) > 0, "the shortcut wrote nothing: the case does not exercise it"
    assert with_shortcut.answers == without.answers
    assert with_shortcut.stored == without.stored == [True] * int(case.stores)
    if case.stall:
        assert len(with_shortcut.answers) == 1  # the A-ASSOCIATE-AC, then cut: no answer
        assert with_shortcut.seconds < TIMEOUT + 3 and without.seconds < TIMEOUT + 3
