"""Acknowledged instances are never replaced or moved: conflicting re-sends are quarantined.

A real in-process SCP on a free port, DCMTK and pynetdicom senders, both databases. The
original stays what C-GET and WADO-RS serve, byte for byte; the quarantined copy lies
under ``quarantine/`` with its row and an audit event.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.assembly.service import AssemblyService
from node.db.models import AuditEvent, Instance, QuarantinedInstance, Report, Study
from node.reports.evidence import verify_evidence
from node.runtime import NodeServices
from node.states import (
    IgnoreReason,
    QuarantineReason,
    QuarantineState,
    ReportState,
    StudyState,
)
from node.web import create_app
from node.web.service_auth import issue_service_token
from tests.dicom_factory import DX_FOR_PRESENTATION, make_cxr_dataset, write_dataset
from tests.integration.dicom_files import read_part10, stored_files
from tests.integration.dicom_net import (
    dcmtk_tool,
    exchange,
    receiver_settings,
    requires_dcmtk,
    running_node,
    store_successes,
    storescu,
)

pytestmark = [pytest.mark.dcmtk, requires_dcmtk]


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[NodeServices]:
    """A receiving node (no assembly loop: studies stay as the test leaves them)."""
    settings = receiver_settings(tmp_path, database_url, assembly={"quiet_seconds": 600},
                                 web={"secret_key": "k" * 48})
    with running_node(settings, assembly=False) as services:
        yield services


def _send(node: NodeServices, *datasets: Dataset, calling_ae: str = "TESTSCU") -> list[int]:
    result = exchange(node.listener.port, datasets, sop_classes=[DX_FOR_PRESENTATION],
                      calling_ae=calling_ae)
    assert result.established
    return result.statuses


def _row(node: NodeServices, sop_uid: str) -> Instance:
    with node.database.sessions() as session:
        return session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_uid)).one()


def _quarantined(node: NodeServices) -> list[QuarantinedInstance]:
    with node.database.sessions() as session:
        return list(session.scalars(select(QuarantinedInstance).order_by(QuarantinedInstance.id)))


def _actions(node: NodeServices) -> list[str]:
    with node.database.sessions() as session:
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def _c_get(node: NodeServices, folder: Path, study_uid: str) -> dict[str, bytes]:
    """Retrieve a study with DCMTK getscu (bit-preserving); return each received file's
    dataset bytes (after its file meta) by SOP Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [str(dcmtk_tool("getscu")), "-v", "-S", "-aet", "GETSCU", "-aec", "RADNODE",
               "+B", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
               "-od", str(folder), "127.0.0.1", str(node.listener.port)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): read_part10(p)[1]
            for p in folder.iterdir()}


def _wado(node: NodeServices, ds: Dataset) -> bytes:
    """The instance as WADO-RS serves it (the single part of the multipart body)."""
    with node.database.sessions.begin() as session:
        token = issue_service_token(session, "gpu-host-1", actor="test")
    app = create_app(node.settings, node.database, node.store)
    with TestClient(app, base_url="http://radnode.test") as client:
        response = client.get(
            f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    return response.content


def _sign(node: NodeServices, study_uid: str) -> None:
    """Record a FINAL report over the study's instances, as sign-off does."""
    with node.database.sessions.begin() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        evidence = {i.sop_instance_uid: i.sha256 for i in study.instances}
        session.add(Report(study_id=study.id, state=ReportState.FINAL, findings="F.",
                           impression="I.", signed_at=dt.datetime.now(dt.UTC),
                           signed_evidence=evidence))
        study.state = StudyState.SIGNED


def test_changed_file_behind_a_signed_report_is_never_served(
        node: NodeServices, tmp_path: Path) -> None:
    """Other bytes written into a stored file after sign-off: C-GET withholds that image
    (a failed sub-operation) and still sends the untouched one, WADO-RS answers 409, and
    each refusal is audited with the instance."""
    first = make_cxr_dataset(rows=32, cols=32, seed=1)
    second = make_cxr_dataset(rows=32, cols=32, seed=2, study_uid=str(first.StudyInstanceUID),
                              series_uid=str(first.SeriesInstanceUID), patient_id=first.PatientID,
                              patient_name=str(first.PatientName))
    assert _send(node, first, second) == [0x0000, 0x0000]
    _sign(node, str(first.StudyInstanceUID))
    path = node.store.absolute(_row(node, str(first.SOPInstanceUID)).path)
    data = bytearray(path.read_bytes())
    data[-10:] = bytes(10)  # other pixel bytes, same length
    path.write_bytes(bytes(data))

    received = _c_get(node, tmp_path / "get", str(first.StudyInstanceUID))
    assert set(received) == {str(second.SOPInstanceUID)}
    with node.database.sessions.begin() as session:
        token = issue_service_token(session, "gpu-host-1", actor="test")
    app = create_app(node.settings, node.database, node.store)
    with TestClient(app, base_url="http://radnode.test") as client:
        refused = client.get(f"/dicomweb/studies/{first.StudyInstanceUID}",
                             headers={"Authorization": f"Bearer {token}"})
        served = client.get(
            f"/dicomweb/studies/{second.StudyInstanceUID}/series/{second.SeriesInstanceUID}"
            f"/instances/{second.SOPInstanceUID}", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 409
    assert "have changed since it was signed" in refused.text
    assert served.status_code == 200
    with node.database.sessions() as session:
        events = list(session.scalars(select(AuditEvent).where(
            AuditEvent.action == "signed_evidence_mismatch").order_by(AuditEvent.id)))
    assert [(e.actor, e.details["during"]) for e in events if e.details] == [
        ("ae:GETSCU", "instances_retrieved"), ("dicomweb", "wado_rs")]
    assert all(e.details and e.details["sop_instance_uids"] == [str(first.SOPInstanceUID)]
               for e in events)


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_resend_with_other_pixels_is_quarantined_and_the_original_served(
        node: NodeServices, tmp_path: Path, signed: bool) -> None:
    """Other pixels under a stored SOP Instance UID (another AE, before or after sign-off):
    Success, the original served byte for byte by C-GET and WADO-RS, the copy quarantined
    with its reason and AE, and audited."""
    ds = make_cxr_dataset(rows=32, cols=32, seed=1)
    assert _send(node, ds, calling_ae="MODALITY") == [0x0000]
    original = _row(node, str(ds.SOPInstanceUID))
    original_bytes = node.store.absolute(original.path).read_bytes()
    if signed:
        _sign(node, str(ds.StudyInstanceUID))

    other = make_cxr_dataset(rows=32, cols=32, seed=99, study_uid=str(ds.StudyInstanceUID),
                             series_uid=str(ds.SeriesInstanceUID), sop_uid=str(ds.SOPInstanceUID))
    assert _send(node, other, calling_ae="INTRUDER") == [0x0000]

    after = _row(node, str(ds.SOPInstanceUID))
    assert (after.id, after.path, after.sha256) == (original.id, original.path, original.sha256)
    assert node.store.absolute(after.path).read_bytes() == original_bytes
    [kept] = _quarantined(node)
    assert kept.reason == QuarantineReason.CONTENT_CONFLICT
    assert kept.state == QuarantineState.QUARANTINED
    assert (kept.calling_ae, kept.instance_id) == ("INTRUDER", original.id)
    assert kept.path is not None and kept.path.startswith("quarantine/")
    quarantined_bytes = node.store.absolute(kept.path).read_bytes()
    assert quarantined_bytes != original_bytes and kept.sha256 != original.sha256
    assert _actions(node).count("instance_quarantined") == 1
    assert "instance_replaced" not in _actions(node)

    received = _c_get(node, tmp_path / "get", str(ds.StudyInstanceUID))
    assert received == {str(ds.SOPInstanceUID): read_part10(node.store.absolute(after.path))[1]}
    assert original_bytes in _wado(node, ds)
    assert quarantined_bytes not in _wado(node, ds)
    if signed:
        with node.database.sessions() as session:
            study = session.scalars(select(Study)).one()
            assert study.state == StudyState.SIGNED
            verify_evidence(session, node.store, study.id)  # the signed evidence is intact

    # The same conflicting copy again: nothing more written or recorded.
    assert _send(node, other, calling_ae="INTRUDER") == [0x0000]
    assert len(_quarantined(node)) == 1
    assert _actions(node).count("instance_quarantined") == 1


def test_identical_resend_writes_nothing(node: NodeServices, tmp_path: Path) -> None:
    """The same bytes again (DCMTK storescu): Success, one row, one file, one audit event."""
    sent = write_dataset(make_cxr_dataset(rows=32, cols=32), tmp_path / "one.dcm")
    assert store_successes(storescu(node.listener.port, [sent])) == 1
    row = _row(node, str(pydicom.dcmread(sent).SOPInstanceUID))
    before = node.store.absolute(row.path).stat()
    assert store_successes(storescu(node.listener.port, [sent])) == 1
    after = node.store.absolute(row.path).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert stored_files(node.store.root) == [node.store.absolute(row.path)]
    assert _quarantined(node) == []
    assert _actions(node).count("instance_received") == 1


@pytest.mark.parametrize("move", ["study", "patient_and_study"])
def test_same_uid_under_another_study_is_quarantined_never_moved(
        node: NodeServices, move: str) -> None:
    """A stored SOP Instance UID sent under another study (and patient): quarantined; the
    instance stays in its study, which keeps its image."""
    ds = make_cxr_dataset(rows=32, cols=32)
    assert _send(node, ds) == [0x0000]
    original = _row(node, str(ds.SOPInstanceUID))
    moved = make_cxr_dataset(rows=32, cols=32, sop_uid=str(ds.SOPInstanceUID),
                             patient_id="OTHER-9" if move == "patient_and_study" else "TEST-0001")
    assert moved.StudyInstanceUID != ds.StudyInstanceUID
    assert _send(node, moved) == [0x0000]

    after = _row(node, str(ds.SOPInstanceUID))
    assert (after.study_id, after.path) == (original.study_id, original.path)
    [kept] = _quarantined(node)
    assert kept.reason == QuarantineReason.STUDY_CONFLICT
    assert kept.study_instance_uid == str(moved.StudyInstanceUID)
    with node.database.sessions() as session:
        uids = list(session.scalars(select(Study.study_instance_uid)))
    assert uids == [str(ds.StudyInstanceUID)]  # no empty study left behind, none created


def test_two_patients_in_one_study(node: NodeServices) -> None:
    """A second patient's instance under a stored study is quarantined for a patient identity
    conflict; the study assembles with the first patient's instances only."""
    study_uid = str(generate_uid())
    first = make_cxr_dataset(rows=16, cols=16, bits=8, study_uid=study_uid, patient_id="P-1",
                             patient_name="ONE^PATIENT")
    first.IssuerOfPatientID = "HOSP-A"
    second = make_cxr_dataset(rows=16, cols=16, bits=8, study_uid=study_uid, patient_id="P-2",
                              patient_name="TWO^PATIENT", instance_number=2)
    same_id_other_birth = make_cxr_dataset(rows=16, cols=16, bits=8, study_uid=study_uid,
                                           patient_id="P-1", patient_name="ONE^PATIENT",
                                           instance_number=3)
    same_id_other_birth.PatientBirthDate = "19700707"
    same_patient = make_cxr_dataset(rows=16, cols=16, bits=8, study_uid=study_uid,
                                    patient_id="P-1", patient_name="one^patient^^",
                                    instance_number=4)
    del same_patient.PatientBirthDate  # a missing value does not conflict
    assert _send(node, first, second, same_id_other_birth, same_patient) == [0x0000] * 4

    kept = _quarantined(node)
    assert [q.sop_instance_uid for q in kept] == [str(second.SOPInstanceUID),
                                                  str(same_id_other_birth.SOPInstanceUID)]
    assert {q.reason for q in kept} == {QuarantineReason.PATIENT_IDENTITY_CONFLICT}
    assert [q.detail for q in kept] == ["PatientID, PatientName", "PatientBirthDate"]
    assert kept[0].reason.value == "patient identity conflict"
    with node.database.sessions() as session:
        study = session.scalars(select(Study)).one()
        members = sorted(i.sop_instance_uid for i in study.instances)
        assert study.patient_id == "P-1"
    assert members == sorted([str(first.SOPInstanceUID), str(same_patient.SOPInstanceUID)])

    assembly = AssemblyService(node.settings.assembly, node.database.sessions)
    assembly.tick(now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    with node.database.sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.state == StudyState.STABLE
        assert {i.patient_id for i in [study]} == {"P-1"}
        assert len(study.instances) == 2


def test_study_without_patient_id_is_ignored(node: NodeServices) -> None:
    """A chest radiograph study with no PatientID is never drafted: IGNORED with the reason."""
    ds = make_cxr_dataset(rows=16, cols=16, bits=8)
    del ds.PatientID
    assert _send(node, ds) == [0x0000]
    assembly = AssemblyService(node.settings.assembly, node.database.sessions)
    assembly.tick(now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    with node.database.sessions() as session:
        study = session.scalars(select(Study)).one()
        events = list(session.scalars(select(AuditEvent).where(
            AuditEvent.action == "study_ignored")))
    assert study.state == StudyState.IGNORED
    assert study.state_reason == IgnoreReason.NO_PATIENT_ID.value
    assert [e.details["reason"] for e in events if e.details] == [IgnoreReason.NO_PATIENT_ID.value]


@pytest.mark.parametrize("keyword", ["PatientName", "PatientID"])
def test_nul_in_patient_identity_is_refused_on_every_database(
        node: NodeServices, keyword: str) -> None:
    """An embedded NUL (which PostgreSQL cannot store and SQLite can) is refused with 0xC210
    on both databases, audited, and nothing is stored."""
    ds = make_cxr_dataset(rows=16, cols=16, bits=8)
    setattr(ds, keyword, "EVIL\x00NAME")
    assert _send(node, ds) == [0xC210]
    assert _send(node, ds) == [0xC210]  # the same answer every time: nothing to retry
    with node.database.sessions() as session:
        assert session.scalars(select(Study)).all() == []
        events = list(session.scalars(select(AuditEvent).where(
            AuditEvent.action == "instance_refused")))
    assert len(events) == 2 and events[0].details is not None
    assert events[0].details["attribute"] == keyword
    assert events[0].details["status"] == "0xC210"
    assert "EVIL" not in str(events[0].details)
    assert stored_files(node.store.root) == []
    padded = make_cxr_dataset(rows=16, cols=16, bits=8)
    padded.PatientName = "TRAILING^PAD\x00"  # NUL padding is stripped, not refused
    assert _send(node, padded) == [0x0000]


def test_concurrent_conflicting_senders_store_one_and_quarantine_the_rest(
        node: NodeServices) -> None:
    """Four associations at once send the same new SOP Instance UID with different pixels,
    and two patients' first images of one new study: one of each is stored, every other
    copy is quarantined, every response is Success."""
    study_uid, series_uid, sop_uid = (str(generate_uid()) for _ in range(3))
    rivals = [make_cxr_dataset(rows=16, cols=16, bits=8, study_uid=study_uid,
                               series_uid=series_uid, sop_uid=sop_uid, seed=n)
              for n in range(4)]
    shared_study = str(generate_uid())
    patients = [make_cxr_dataset(rows=16, cols=16, bits=8, study_uid=shared_study,
                                 patient_id=f"P-{n}", patient_name=f"PATIENT^{n}")
                for n in range(2)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda ds: _send(node, ds), [*rivals, *patients]))
    assert statuses == [[0x0000]] * 6

    stored = _row(node, sop_uid)
    kept = _quarantined(node)
    rival_copies = [q for q in kept if q.sop_instance_uid == sop_uid]
    assert len(rival_copies) == 3
    assert {q.reason for q in rival_copies} == {QuarantineReason.CONTENT_CONFLICT}
    assert stored.sha256 not in {q.sha256 for q in rival_copies}
    assert all(q.instance_id == stored.id for q in rival_copies)
    with node.database.sessions() as session:
        study = session.scalars(select(Study).where(
            Study.study_instance_uid == shared_study)).one()
        members = [i.sop_instance_uid for i in study.instances]
        winner = study.patient_id
    [loser] = [q for q in kept if q.study_instance_uid == shared_study]
    assert loser.reason == QuarantineReason.PATIENT_IDENTITY_CONFLICT
    assert loser.patient_id != winner and len(members) == 1
    on_disk = {p.relative_to(node.store.root).as_posix() for p in stored_files(node.store.root)}
    assert on_disk == {stored.path, *(q.path for q in kept)} | {
        i.path for i in [_row(node, members[0])]}
