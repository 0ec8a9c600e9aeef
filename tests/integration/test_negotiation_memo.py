"""Association requests negotiated once: the listener answers a request it has seen
with exactly the A-ASSOCIATE-AC it would compute afresh, and anything that depends on
more than the request's bytes is negotiated every time. Network edge only: SQLite."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from node.dicom.negotiation_memo import NegotiationMemo
from node.runtime import NodeServices
from tests.dicom_factory import make_cxr_dataset
from tests.integration.dicom_net import receiver_settings, running_node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeServices]:
    settings = receiver_settings(
        tmp_path, f"sqlite:///{tmp_path / 'radnode.db'}",
        dicom={"require_called_ae": True,
               "peers": [{"ae_title": "MODALITY", "store": True},
                         {"ae_title": "VIEWER", "store": True, "query": True,
                          "retrieve": True}]},
    )
    with running_node(settings, assembly=False) as services:
        yield services


def _memo(node: NodeServices) -> NegotiationMemo:
    server: Any = node.listener._server
    assert isinstance(server.negotiation_memo, NegotiationMemo)
    return server.negotiation_memo


def _scu(calling_ae: str) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for sop_class in (Verification, DigitalXRayImageStorageForPresentation, CTImageStorage,
                      StudyRootQueryRetrieveInformationModelFind,
                      PatientRootQueryRetrieveInformationModelGet):
        ae.add_requested_context(sop_class)
    return ae


def _associate(port: int, calling_ae: str = "MODALITY", *, called_ae: str = "RADNODE",
               roles: Sequence[Any] = (), identity: bool = False,
               store: bool = False) -> tuple[bytes, list[int], Any]:
    """Associate, optionally store one image, release; the raw A-ASSOCIATE answer PDU, the
    accepted context IDs and the association."""
    answers: list[bytes] = []

    def on_data(event: Any) -> None:
        if not answers:
            answers.append(bytes(event.data))

    ext: list[Any] = list(roles)
    if identity:
        item = UserIdentityNegotiation()
        item.user_identity_type = 1
        item.primary_field = b"reader"
        ext.append(item)
    assoc = _scu(calling_ae).associate(
        "127.0.0.1", port, ae_title=called_ae, ext_neg=ext or None,
        evt_handlers=[(evt.EVT_DATA_RECV, on_data)])
    accepted = sorted(int(cx.context_id or 0) for cx in assoc.accepted_contexts)
    if assoc.is_established:
        if store:
            status = assoc.send_c_store(make_cxr_dataset(rows=64, cols=64))
            assert int(status.Status) == 0x0000
        assoc.release()
    assert answers, "no answer to the association request"
    return answers[0], accepted, assoc


def test_a_repeated_request_gets_the_same_accept_as_a_fresh_negotiation(
        node: NodeServices, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same request three times: decoded once, one remembered entry, three identical
    A-ASSOCIATE-AC PDUs, and the same bytes as the listener sends with the memo off."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ

    decoded: list[int] = []
    original_decode = A_ASSOCIATE_RQ.decode

    def counting_decode(self: A_ASSOCIATE_RQ, bytestream: bytes) -> None:
        decoded.append(len(bytestream))
        original_decode(self, bytestream)

    monkeypatch.setattr(A_ASSOCIATE_RQ, "decode", counting_decode)
    port = node.listener.port
    answers = [_associate(port, store=True) for _ in range(3)]
    assert len(_memo(node)) == 1
    assert len(decoded) == 1
    assert answers[0][0][:1] == b"\x02"  # A-ASSOCIATE-AC
    assert answers[0][0] == answers[1][0] == answers[2][0]
    assert answers[0][1] == answers[2][1] and answers[0][1]

    server: Any = node.listener._server
    server.negotiation_memo = None
    fresh = _associate(port, store=True)
    assert fresh[0] == answers[2][0]
    assert fresh[1] == answers[2][1]


def test_the_answer_follows_the_calling_aes_permissions(node: NodeServices) -> None:
    """Two AEs proposing the same contexts: the query context is accepted for the viewer
    only, however often each asks and in whichever order."""
    port = node.listener.port
    modality = [_associate(port, "MODALITY") for _ in range(2)]
    viewer = [_associate(port, "VIEWER") for _ in range(2)]
    modality.append(_associate(port, "MODALITY"))
    find_context_id = 7  # the fourth proposed context (IDs 1, 3, 5, 7, 9)
    assert all(find_context_id not in accepted for _, accepted, _ in modality)
    assert all(find_context_id in accepted for _, accepted, _ in viewer)
    assert len(_memo(node)) == 2


def test_role_selection_is_answered_per_request(node: NodeServices) -> None:
    """A C-GET requestor proposing the SCP role for storage gets the role reply each time;
    a request without role selection gets none."""
    port = node.listener.port
    with_roles = [_associate(port, "VIEWER", roles=[build_role(
        DigitalXRayImageStorageForPresentation, scp_role=True)]) for _ in range(2)]
    without = _associate(port, "VIEWER")
    assert with_roles[0][0] == with_roles[1][0]
    for _, _, assoc in with_roles:
        assert assoc.acceptor.role_selection, "no role selection reply"
    assert not without[2].acceptor.role_selection
    assert with_roles[0][0] != without[0]


def test_a_request_with_user_identity_is_negotiated_every_time(node: NodeServices) -> None:
    port = node.listener.port
    for _ in range(2):
        _, accepted, assoc = _associate(port, identity=True)
        assert assoc.is_released and accepted
    assert len(_memo(node)) == 0


def test_a_wrong_called_ae_is_rejected_every_time(node: NodeServices) -> None:
    port = node.listener.port
    accepted = _associate(port)
    for _ in range(2):
        answer, _, assoc = _associate(port, called_ae="SOMEONE")
        assert assoc.is_rejected and answer[:1] == b"\x03"
    again = _associate(port)
    assert again[0] == accepted[0] and again[2].is_released


def test_the_remembered_request_is_left_as_it_was_decoded(node: NodeServices) -> None:
    """Associations only read the shared request: after several, its primitive still
    encodes to the bytes the sender sent."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ

    port = node.listener.port
    sent: list[bytes] = []

    def on_sent(event: Any) -> None:
        if not sent:
            sent.append(bytes(event.data))

    for _ in range(3):
        assoc = _scu("MODALITY").associate("127.0.0.1", port, ae_title="RADNODE",
                                            evt_handlers=[(evt.EVT_DATA_SENT, on_sent)])
        assoc.send_c_store(make_cxr_dataset(rows=32, cols=32))
        assoc.release()
    memo = _memo(node)
    (request,) = memo._requests.values()
    assert A_ASSOCIATE_RQ(request.primitive).encode() == sent[0]
    assert request.pdu.encode() == sent[0]
