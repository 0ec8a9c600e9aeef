"""Per-AE permissions: who may store, who may query and retrieve, from where.

A modality may store but not query; a viewer may query and retrieve but not store;
C-MOVE goes only to configured destinations; an AE not named is rejected, and an AE
pinned to an address is rejected from any other. These tests are about the network
edge, so they run on SQLite only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import select

from node.db.models import AuditEvent
from node.runtime import NodeServices
from tests.dicom_factory import DX_FOR_PRESENTATION, make_cxr_dataset
from tests.integration.dicom_net import exchange, receiver_settings, running_node
from tests.reliability.hostile_scu import stored_instance_uids

QR_CLASSES = (StudyRootQueryRetrieveInformationModelFind,
              StudyRootQueryRetrieveInformationModelMove,
              PatientRootQueryRetrieveInformationModelGet)
NOT_AUTHORIZED = 0x0124


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeServices]:
    settings = receiver_settings(
        tmp_path, f"sqlite:///{tmp_path / 'radnode.db'}",
        dicom={"allowed_calling_aes": ["LEGACY"],
               "peers": [{"ae_title": "MODALITY", "store": True},
                         {"ae_title": "VIEWER", "store": False, "query": True,
                          "retrieve": True},
                         {"ae_title": "PINNED", "host": "127.0.0.9"}]},
        destinations=[{"ae_title": "MOVEDEST", "host": "127.0.0.1", "port": 1,
                       "auto_export": False}],
    )
    with running_node(settings, assembly=False) as services:
        yield services


def _associate(port: int, calling_ae: str, *, source: str = "127.0.0.1") -> object:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    for sop_class in QR_CLASSES:
        ae.add_requested_context(sop_class)
    return ae.associate("127.0.0.1", port, ae_title="RADNODE", bind_address=(source, 0))


def _study_query(patient_id: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.PatientName = ""
    query.StudyInstanceUID = ""
    return query


def test_a_store_only_modality_cannot_query_or_retrieve(node: NodeServices) -> None:
    """MODALITY stores; its Query/Retrieve presentation contexts are rejected."""
    ds = make_cxr_dataset(rows=16, cols=16, bits=8)
    assert exchange(node.listener.port, [ds], calling_ae="MODALITY",
                    sop_classes=[DX_FOR_PRESENTATION]).statuses == [0x0000]
    assoc = _associate(node.listener.port, "MODALITY")
    try:
        assert assoc.is_established  # type: ignore[attr-defined]
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}  # type: ignore[attr-defined]
        rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}  # type: ignore[attr-defined]
        assert accepted == {Verification}
        assert rejected == set(QR_CLASSES)
        # Result 3: abstract syntax not supported (for this calling AE).
        assert {cx.result for cx in assoc.rejected_contexts} == {0x03}  # type: ignore[attr-defined]
        with pytest.raises(ValueError):
            list(assoc.send_c_find(_study_query(str(ds.PatientID)),  # type: ignore[attr-defined]
                                   StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()  # type: ignore[attr-defined]


def test_a_viewer_queries_but_may_not_store(node: NodeServices) -> None:
    """VIEWER's C-STORE is answered 0x0124 (not authorized) and nothing is kept; its
    C-FIND finds what MODALITY stored."""
    stored = make_cxr_dataset(rows=16, cols=16, bits=8)
    assert exchange(node.listener.port, [stored], calling_ae="MODALITY",
                    sop_classes=[DX_FOR_PRESENTATION]).statuses == [0x0000]
    refused = make_cxr_dataset(rows=16, cols=16, bits=8)
    assert exchange(node.listener.port, [refused], calling_ae="VIEWER",
                    sop_classes=[DX_FOR_PRESENTATION]).statuses == [NOT_AUTHORIZED]
    assert stored_instance_uids(node) == {stored.SOPInstanceUID}
    assoc = _associate(node.listener.port, "VIEWER")
    try:
        responses = list(assoc.send_c_find(  # type: ignore[attr-defined]
            _study_query(str(stored.PatientID)), StudyRootQueryRetrieveInformationModelFind))
    finally:
        assoc.release()  # type: ignore[attr-defined]
    matches = [identifier for status, identifier in responses if status.Status == 0xFF00]
    assert [m.StudyInstanceUID for m in matches] == [stored.StudyInstanceUID]


def test_move_only_to_configured_destinations(node: NodeServices) -> None:
    """A C-MOVE to an AE title not in the configuration is answered 0xA801."""
    stored = make_cxr_dataset(rows=16, cols=16, bits=8)
    assert exchange(node.listener.port, [stored], calling_ae="MODALITY",
                    sop_classes=[DX_FOR_PRESENTATION]).statuses == [0x0000]
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = stored.StudyInstanceUID
    assoc = _associate(node.listener.port, "VIEWER")
    try:
        responses = list(assoc.send_c_move(  # type: ignore[attr-defined]
            identifier, "ATTACKER", StudyRootQueryRetrieveInformationModelMove))
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert [int(status.Status) for status, _ in responses] == [0xA801]


def test_unknown_and_misplaced_aes_are_rejected_and_audited(node: NodeServices) -> None:
    """An AE not named, or a pinned AE from another address, gets A-ASSOCIATE-RJ 1/1/3;
    the legacy allow-list keeps every permission; refusals are audited."""
    stranger = exchange(node.listener.port, [None], calling_ae="STRANGER")
    assert stranger.rejected and stranger.reject is not None
    assert (stranger.reject.result, stranger.reject.result_source,
            stranger.reject.diagnostic) == (0x01, 0x01, 0x03)
    assert _associate(node.listener.port, "PINNED").is_rejected  # type: ignore[attr-defined]
    pinned = _associate(node.listener.port, "PINNED", source="127.0.0.9")
    assert pinned.is_established  # type: ignore[attr-defined]
    pinned.release()  # type: ignore[attr-defined]
    legacy = _associate(node.listener.port, "LEGACY")
    accepted = {cx.abstract_syntax for cx in legacy.accepted_contexts}  # type: ignore[attr-defined]
    legacy.release()  # type: ignore[attr-defined]
    assert accepted == {Verification, *QR_CLASSES}
    with node.database.sessions() as session:
        refusals = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "association_refused")).all()
    reasons = {(e.actor, (e.details or {}).get("reason")) for e in refusals}
    assert ("ae:STRANGER", "calling AE title not accepted") in reasons
    assert ("ae:PINNED", "calling AE title not accepted from this address") in reasons
