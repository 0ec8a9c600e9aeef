"""Report export against a real Orthanc: delivery, outages, refusals, dead letter, no doubles.

Back-off is stepped through by passing ``now`` to :meth:`ExportService.deliver_due`;
nothing here sleeps for a retry delay. Each database test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import io
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import AE, evt
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]
from sqlalchemy import select

from node.config import Destination, DestinationExports, ExportSettings, Settings
from node.db.models import AuditEvent, Export, Instance, Report, Study
from node.dicom.export import (
    DestinationRefused,
    DestinationUnreachable,
    ExportError,
    Sendable,
    SendResult,
    send_instance,
    send_instances,
)
from node.exports import ExportService, backoff_delay, queue_exports
from node.runtime import Database
from node.states import ExportState, ReportState, StudyState
from node.storage import InstanceStore
from tests.conftest import free_port, make_settings
from tests.dicom_factory import (
    compress_with_dcmtk,
    make_cxr_dataset,
    write_dataset,
)
from tests.orthanc import (
    OrthancServer,
    make_test_pki,
    requires_openssl,
    requires_orthanc,
    running_orthanc,
)

pytestmark = requires_orthanc

T0 = dt.datetime(2030, 1, 7, 8, 0, tzinfo=dt.UTC)
CALLING_AE = "RADNODE"
FAST_EXPORTS = {"base_delay_seconds": 30, "backoff_factor": 2, "max_delay_seconds": 900,
                "max_age_seconds": 3600, "timeout_seconds": 5, "claim_seconds": 300}


def at(seconds: float) -> dt.datetime:
    """``T0`` plus ``seconds``."""
    return T0 + dt.timedelta(seconds=seconds)


# -- building reports ---------------------------------------------------------------------


def build_report_sr(image: Dataset) -> Dataset:
    """A small draft Comprehensive SR (TID 2000 shape) about ``image``."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    findings = hd.sr.ContainerContentItem(name=codes.DCM.Findings, relationship_type=contains)
    findings.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=codes.DCM.Finding, value="No acute cardiopulmonary process.",
                              relationship_type=contains),
    ])
    root = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept("18748-4", "LN", "Diagnostic Imaging Report"), template_id="2000"
    )
    root.ContentSequence = hd.sr.ContentSequence([findings])
    return hd.sr.ComprehensiveSR(
        evidence=[image], content=root, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="RADNODE TEST",
        is_complete=False, is_final=False, is_verified=False,
    )


def _write(store: InstanceStore, ds: Dataset) -> tuple[str, bytes]:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    relative = store.relative_path(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
        hashlib.sha256(data).hexdigest(),
    )
    store.write(relative, data)
    return relative, data


@dataclass
class StoredReport:
    """A report row whose SR file is in the store."""

    report_id: int
    study_id: int
    sr_uid: str
    image_uids: list[str] = field(default_factory=list)


def store_report(
    database: Database, store: InstanceStore, *, images: int = 0, seed: int = 0,
    state: ReportState = ReportState.FINAL,
) -> StoredReport:
    """Write a study (with ``images`` stored instances), a report and its SR file.

    The report row is FINAL unless ``state`` says otherwise (every destination receives
    signed reports; drafts only those that ask for them); the SR is the same small file
    either way, since delivery does not read it.
    """
    first = make_cxr_dataset(rows=64, cols=64, seed=seed, patient_id=f"EXP-{seed}")
    datasets = [first] + [
        make_cxr_dataset(rows=64, cols=64, seed=seed, study_uid=first.StudyInstanceUID,
                         series_uid=first.SeriesInstanceUID, instance_number=n + 1,
                         patient_id=f"EXP-{seed}")
        for n in range(1, images)
    ]
    sr = build_report_sr(first)
    with database.sessions.begin() as session:
        study = Study(study_instance_uid=first.StudyInstanceUID, state=StudyState.DRAFTED)
        session.add(study)
        session.flush()
        for ds in datasets[:images]:
            relative, data = _write(store, ds)
            session.add(Instance(
                study_id=study.id, sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID, series_instance_uid=ds.SeriesInstanceUID,
                instance_number=ds.InstanceNumber, modality=ds.Modality,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, path=relative,
                size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
            ))
        sr_path, _ = _write(store, sr)
        report = Report(study_id=study.id, state=state,
                        sop_instance_uid=sr.SOPInstanceUID,
                        series_instance_uid=sr.SeriesInstanceUID, sr_path=sr_path)
        session.add(report)
        session.flush()
        return StoredReport(report.id, study.id, str(sr.SOPInstanceUID),
                            [str(ds.SOPInstanceUID) for ds in datasets[:images]])


def queue(database: Database, stored: StoredReport, *destinations: Destination) -> list[int]:
    """Queue exports of ``stored`` at ``T0``; return their ids."""
    with database.sessions.begin() as session:
        report = session.get_one(Report, stored.report_id)
        return [e.id for e in queue_exports(session, report, destinations, now=T0)]


def export_row(database: Database, export_id: int) -> Export:
    with database.sessions() as session:
        return session.get_one(Export, export_id)


def audit_actions(database: Database, export_id: int) -> list[tuple[str, dict[str, Any]]]:
    with database.sessions() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.object_type == "export",
                                     AuditEvent.object_id == str(export_id))
            .order_by(AuditEvent.id)
        )
        return [(e.action, e.details or {}) for e in events]


# -- services -----------------------------------------------------------------------------


class RecordingSender:
    """Sends for real and remembers every association: (destination AE, SOP instance UIDs)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.associations: list[tuple[str, list[str]]] = []

    def __call__(
        self,
        destination: Destination,
        items: Sequence[Sendable],
        *,
        calling_ae: str,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> list[SendResult]:
        time.sleep(self.delay)
        try:
            results = send_instances(destination, items, calling_ae=calling_ae,
                                     timeout=timeout, ssl_context=ssl_context)
        finally:
            self.associations.append((destination.ae_title, [str(p) for p in items]))
        return results

    def sent_uids(self) -> list[str]:
        """Report SR paths end in ``<sop uid>_<digest>.dcm``; return the UIDs per send."""
        return [Path(p).name.split("_")[0] for _, items in self.associations for p in items]


def make_service(
    database: Database,
    store: InstanceStore,
    destinations: Sequence[Destination],
    sender: RecordingSender | None = None,
    **overrides: Any,
) -> ExportService:
    return ExportService(
        ExportSettings(**{**FAST_EXPORTS, **overrides}), destinations, database.sessions,
        store, calling_ae=CALLING_AE, sender=sender or RecordingSender(),
    )


def destination_of(orthanc: OrthancServer) -> Destination:
    return Destination(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port)


@pytest.fixture(scope="module")
def shared_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc for the tests that neither stop nor reconfigure it."""
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture
def store(settings: Settings) -> InstanceStore:
    return InstanceStore(settings.storage.root, min_free_mb=1, max_used_percent=100)


# -- settings and arithmetic --------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    settings = ExportSettings()
    delays = [backoff_delay(n, settings) for n in (1, 2, 3, 4, 5, 6, 50, 5000)]
    assert delays == [30, 60, 120, 240, 480, 900, 900, 900]


def test_export_settings_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADNODE_EXPORTS__INCLUDE_IMAGES", "true")
    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}",
        destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}],
    )
    assert settings.exports.include_images is True
    exports = settings.exports
    assert (exports.base_delay_seconds, exports.max_delay_seconds, exports.max_age_seconds,
            exports.period_seconds, exports.calling_ae) == (30, 900, 86400, 5, None)
    store = InstanceStore(settings.storage.root, min_free_mb=1, max_used_percent=100)
    service = ExportService.from_settings(settings, Database.from_settings(settings).sessions,
                                          store)
    assert service.calling_ae == settings.dicom.ae_title == "RADNODE"
    assert list(service.destinations) == ["PACS"]
    with pytest.raises(ValueError, match="unique"):
        ExportService(ExportSettings(), [settings.destinations[0]] * 2, service.sessions, store,
                      calling_ae="RADNODE")


# -- queueing -----------------------------------------------------------------------------


def test_queue_exports_is_idempotent(database: Database, store: InstanceStore) -> None:
    stored = store_report(database, store)
    pacs = Destination(ae_title="PACS", host="127.0.0.1", port=104)
    archive = Destination(ae_title="ARCHIVE", host="127.0.0.1", port=105)
    first = queue(database, stored, pacs, archive, pacs)
    again = queue(database, stored, archive, pacs)
    assert len(first) == 2 and sorted(again) == sorted(first)
    with database.sessions() as session:
        rows = session.scalars(select(Export).where(Export.report_id == stored.report_id)).all()
        assert {(r.destination_ae, r.state, r.attempts) for r in rows} == {
            ("PACS", ExportState.PENDING, 0), ("ARCHIVE", ExportState.PENDING, 0)}
        assert all(r.next_attempt_at == T0 for r in rows)
    assert [action for e in first for action, _ in audit_actions(database, e)] == [
        "export_queued", "export_queued"]


def test_move_only_destinations_get_no_automatic_exports(database: Database,
                                                         store: InstanceStore) -> None:
    stored = store_report(database, store)
    pacs = Destination(ae_title="PACS", host="127.0.0.1", port=104)
    viewer = Destination(ae_title="VIEWER", host="127.0.0.1", port=106, auto_export=False)
    assert pacs.auto_export is True
    queued = queue(database, stored, pacs, viewer)
    assert [export_row(database, e).destination_ae for e in queued] == ["PACS"]
    assert queue(database, stored, viewer) == []
    with database.sessions() as session:
        titles = session.scalars(select(Export.destination_ae)
                                 .where(Export.report_id == stored.report_id)).all()
    assert titles == ["PACS"]


def test_drafts_go_only_to_destinations_that_ask_for_them(database: Database,
                                                         store: InstanceStore) -> None:
    pacs = Destination(ae_title="PACS", host="127.0.0.1", port=104)
    review = Destination(ae_title="REVIEW", host="127.0.0.1", port=105,
                         exports="drafts_and_finals")
    move_only = Destination(ae_title="VIEWER", host="127.0.0.1", port=106,
                            exports="drafts_and_finals", auto_export=False)
    assert pacs.exports is DestinationExports.FINALS_ONLY and pacs.exports_by_default
    assert not review.exports_by_default and not move_only.receives_drafts()
    draft = store_report(database, store, state=ReportState.DRAFT, seed=1)
    final = store_report(database, store, state=ReportState.FINAL, seed=2)
    assert [export_row(database, e).destination_ae
            for e in queue(database, draft, pacs, review, move_only)] == ["REVIEW"]
    assert [export_row(database, e).destination_ae
            for e in queue(database, final, pacs, review, move_only)] == ["PACS", "REVIEW"]
    with pytest.raises(ValueError, match="exports"):
        Destination(ae_title="PACS", host="127.0.0.1", port=104, exports="drafts")


# -- delivery -----------------------------------------------------------------------------


def test_export_appears_in_orthanc(
    database: Database, store: InstanceStore, shared_orthanc: OrthancServer
) -> None:
    stored = store_report(database, store)
    [export_id] = queue(database, stored, destination_of(shared_orthanc))
    service = make_service(database, store, [destination_of(shared_orthanc)])

    assert service.deliver_due(now=T0) == [export_id]

    row = export_row(database, export_id)
    assert (row.state, row.attempts, row.sent_at, row.last_error) == (
        ExportState.SENT, 1, T0, None)
    assert shared_orthanc.sop_instance_uids().count(stored.sr_uid) == 1
    sent = [d for action, d in audit_actions(database, export_id) if action == "export_sent"]
    assert len(sent) == 1 and sent[0]["destination_ae"] == "ORTHANC"


def test_sent_export_is_never_sent_again(
    database: Database, store: InstanceStore, shared_orthanc: OrthancServer
) -> None:
    stored = store_report(database, store)
    destination = destination_of(shared_orthanc)
    [export_id] = queue(database, stored, destination)
    sender = RecordingSender()
    service = make_service(database, store, [destination], sender)
    assert service.deliver_due(now=T0) == [export_id]

    assert queue(database, stored, destination) == [export_id]  # queueing again adds nothing
    for later in (0, 60, 86400 * 30):
        assert service.deliver_due(now=at(later)) == []
    assert len(sender.associations) == 1
    row = export_row(database, export_id)
    assert (row.state, row.attempts, row.sent_at) == (ExportState.SENT, 1, T0)
    assert shared_orthanc.sop_instance_uids().count(stored.sr_uid) == 1


def test_outage_then_recovery_delivers_exactly_once(
    database: Database, store: InstanceStore, tmp_path: Path
) -> None:
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        stored = store_report(database, store)
        [export_id] = queue(database, stored, destination_of(orthanc))
        sender = RecordingSender()
        service = make_service(database, store, [destination_of(orthanc)], sender)

        orthanc.stop()
        assert service.deliver_due(now=T0) == [export_id]
        row = export_row(database, export_id)
        assert (row.state, row.attempts, row.next_attempt_at) == (
            ExportState.RETRYING, 1, at(30))
        assert row.last_error is not None and "cannot connect to ORTHANC" in row.last_error

        assert service.deliver_due(now=at(29)) == []  # not due yet
        assert service.deliver_due(now=at(30)) == [export_id]
        row = export_row(database, export_id)
        assert (row.state, row.attempts, row.next_attempt_at) == (
            ExportState.RETRYING, 2, at(90))

        orthanc.start()  # same ports, same storage
        assert service.deliver_due(now=at(90)) == [export_id]
        row = export_row(database, export_id)
        assert (row.state, row.attempts, row.sent_at, row.last_error) == (
            ExportState.SENT, 3, at(90), None)
        assert orthanc.sop_instance_uids() == [stored.sr_uid]
        assert service.deliver_due(now=at(10_000)) == []
        assert len(sender.associations) == 3
        assert [a for a, _ in audit_actions(database, export_id)] == [
            "export_queued", "export_sent"]


def test_export_fails_after_max_age(database: Database, store: InstanceStore) -> None:
    nobody = Destination(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    stored = store_report(database, store)
    [export_id] = queue(database, stored, nobody)
    service = make_service(database, store, [nobody], max_age_seconds=120)

    schedule = []
    for now in (T0, at(30), at(90)):
        assert service.deliver_due(now=now) == [export_id]
        row = export_row(database, export_id)
        schedule.append((row.state, row.next_attempt_at))
    # 30 s, then 60 s, then clipped to the maximum age for one last attempt
    assert schedule == [(ExportState.RETRYING, at(30)), (ExportState.RETRYING, at(90)),
                        (ExportState.RETRYING, at(120))]

    assert service.deliver_due(now=at(120)) == [export_id]
    row = export_row(database, export_id)
    assert (row.state, row.attempts, row.next_attempt_at) == (ExportState.FAILED, 4, None)
    assert row.last_error is not None and "cannot connect to NOBODY" in row.last_error
    failed = [d for a, d in audit_actions(database, export_id) if a == "export_failed"]
    assert len(failed) == 1 and failed[0]["destination_ae"] == "NOBODY"
    assert "cannot connect" in failed[0]["last_error"]
    assert service.deliver_due(now=at(100_000)) == []  # the dead letter stays put


def test_refusing_destination_is_recorded_then_failed(
    database: Database, store: InstanceStore, tmp_path: Path
) -> None:
    refusing = {"DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False,
                "DicomModalities": {"other": ["OTHERNODE", "127.0.0.1", 104]}}
    with running_orthanc(tmp_path / "orthanc", refusing) as orthanc:
        stored = store_report(database, store)
        [export_id] = queue(database, stored, destination_of(orthanc))
        service = make_service(database, store, [destination_of(orthanc)], max_age_seconds=60)

        service.deliver_due(now=T0)
        row = export_row(database, export_id)
        assert (row.state, row.attempts) == (ExportState.RETRYING, 1)
        assert row.last_error is not None
        assert "association rejected by ORTHANC" in row.last_error
        assert "Calling AE title not recognised" in row.last_error

        service.deliver_due(now=at(60))
        row = export_row(database, export_id)
        assert (row.state, row.attempts) == (ExportState.FAILED, 2)
        assert "association rejected" in (row.last_error or "")
        assert orthanc.instance_count() == 0


def test_unconfigured_destination_waits_then_fails(
    database: Database, store: InstanceStore
) -> None:
    stored = store_report(database, store)
    gone = Destination(ae_title="GONE", host="127.0.0.1", port=104)
    [export_id] = queue(database, stored, gone)
    service = make_service(database, store, [], max_age_seconds=30)
    service.deliver_due(now=T0)
    row = export_row(database, export_id)
    assert (row.state, row.last_error) == (
        ExportState.RETRYING, "destination GONE is not configured")
    service.deliver_due(now=at(30))
    assert export_row(database, export_id).state == ExportState.FAILED


# -- no double delivery -------------------------------------------------------------------


def test_concurrent_passes_never_claim_the_same_export(
    database: Database, store: InstanceStore, settings: Settings, shared_orthanc: OrthancServer
) -> None:
    destination = destination_of(shared_orthanc)
    reports = [store_report(database, store, seed=n) for n in range(6)]
    export_ids = [queue(database, r, destination)[0] for r in reports]
    other_process = Database.from_settings(settings)  # its own engine and connections
    senders = [RecordingSender(delay=0.2), RecordingSender(delay=0.2)]
    services = [make_service(database, store, [destination], senders[0], batch_size=4),
                make_service(other_process, store, [destination], senders[1], batch_size=4)]
    claimed: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def run(index: int) -> None:
        start.wait()
        claimed[index] = services[index].deliver_due(now=T0)

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        other_process.engine.dispose()

    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == sorted(export_ids)
    assert sorted(map(len, claimed)) == [2, 4]  # both passes worked, side by side
    sent = senders[0].sent_uids() + senders[1].sent_uids()
    assert sorted(sent) == sorted(r.sr_uid for r in reports)  # each SR sent once
    in_orthanc = shared_orthanc.sop_instance_uids()
    assert all(in_orthanc.count(r.sr_uid) == 1 for r in reports)
    assert {export_row(database, e).state for e in export_ids} == {ExportState.SENT}


@pytest.mark.postgres
def test_row_locked_by_another_transaction_is_skipped(
    tmp_path: Path, postgres_url: str, shared_orthanc: OrthancServer
) -> None:
    database = Database.from_settings(make_settings(tmp_path, postgres_url), migrate=True)
    store = InstanceStore(tmp_path / "storage", min_free_mb=1, max_used_percent=100)
    destination = destination_of(shared_orthanc)
    locked_id, free_id = (queue(database, store_report(database, store, seed=n), destination)[0]
                          for n in (60, 61))
    service = make_service(database, store, [destination])
    try:
        with database.engine.connect() as other, other.begin():
            other.execute(select(Export.id).where(Export.id == locked_id).with_for_update())
            started = time.monotonic()
            assert service.deliver_due(now=T0) == [free_id]
            assert time.monotonic() - started < 5  # skipped, not waited for
        assert service.deliver_due(now=T0) == [locked_id]
        assert {export_row(database, e).state for e in (locked_id, free_id)} == {
            ExportState.SENT}
    finally:
        database.engine.dispose()


def test_each_destination_is_tracked_on_its_own(
    database: Database, store: InstanceStore, shared_orthanc: OrthancServer
) -> None:
    orthanc = destination_of(shared_orthanc)
    nobody = Destination(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    first, second = (store_report(database, store, seed=n) for n in (70, 71))
    ids = {(r.report_id, d.ae_title): e for r in (first, second)
           for d, e in zip((orthanc, nobody), queue(database, r, orthanc, nobody), strict=True)}
    sender = RecordingSender()
    service = make_service(database, store, [orthanc, nobody], sender)

    assert sorted(service.deliver_due(now=T0)) == sorted(ids.values())

    rows = {key: export_row(database, e) for key, e in ids.items()}
    assert {k: r.state for k, r in rows.items() if k[1] == "ORTHANC"} == {
        (first.report_id, "ORTHANC"): ExportState.SENT,
        (second.report_id, "ORTHANC"): ExportState.SENT}
    unreachable = [r for k, r in rows.items() if k[1] == "NOBODY"]
    assert [r.state for r in unreachable] == [ExportState.RETRYING] * 2
    errors = sorted(r.last_error or "" for r in unreachable)
    assert errors[0].startswith("cannot connect to NOBODY")
    assert errors[1].startswith("not attempted: cannot connect to NOBODY")  # one try per pass
    assert [ae for ae, _ in sender.associations].count("NOBODY") == 1


class ProcessDied(BaseException):
    """Stands for the node being killed in the middle of a send."""


def test_claim_of_a_dead_sender_is_taken_again_after_its_lease(
    database: Database, store: InstanceStore, shared_orthanc: OrthancServer
) -> None:
    destination = destination_of(shared_orthanc)
    stored = store_report(database, store)
    [export_id] = queue(database, stored, destination)

    def dies(*_args: Any, **_kwargs: Any) -> list[SendResult]:
        raise ProcessDied

    crashed = ExportService(ExportSettings(**FAST_EXPORTS), [destination], database.sessions,
                            store, calling_ae=CALLING_AE, sender=dies)
    with pytest.raises(ProcessDied):
        crashed.deliver_due(now=T0)
    row = export_row(database, export_id)
    assert (row.state, row.attempts, row.next_attempt_at) == (ExportState.PENDING, 1, at(300))

    service = make_service(database, store, [destination])
    assert service.deliver_due(now=at(299)) == []  # still leased to the dead sender
    assert service.deliver_due(now=at(300)) == [export_id]
    row = export_row(database, export_id)
    assert (row.state, row.attempts) == (ExportState.SENT, 2)
    assert shared_orthanc.sop_instance_uids().count(stored.sr_uid) == 1


# -- images, transfer syntaxes, the loop --------------------------------------------------


def test_study_images_go_before_the_sr(
    database: Database, store: InstanceStore, shared_orthanc: OrthancServer
) -> None:
    destination = destination_of(shared_orthanc)
    stored = store_report(database, store, images=2, seed=40)
    [export_id] = queue(database, stored, destination)
    sender = RecordingSender()
    service = make_service(database, store, [destination], sender, include_images=True)
    service.deliver_due(now=T0)

    assert export_row(database, export_id).state == ExportState.SENT
    assert len(sender.associations) == 1
    assert sender.sent_uids() == [*stored.image_uids, stored.sr_uid]
    in_orthanc = shared_orthanc.sop_instance_uids()
    assert all(in_orthanc.count(uid) == 1 for uid in [*stored.image_uids, stored.sr_uid])


def test_loop_delivers_when_notified(
    database: Database, store: InstanceStore, shared_orthanc: OrthancServer
) -> None:
    destination = destination_of(shared_orthanc)
    service = make_service(database, store, [destination], period_seconds=60)
    service.start()
    try:
        stored = store_report(database, store, seed=50)
        with database.sessions.begin() as session:
            [export] = queue_exports(session, session.get_one(Report, stored.report_id),
                                     [destination])
            export_id = export.id
        service.notify()
        deadline = time.monotonic() + 10
        while export_row(database, export_id).state != ExportState.SENT:
            assert time.monotonic() < deadline, "the loop did not deliver"
            time.sleep(0.05)
    finally:
        service.stop()
    assert shared_orthanc.sop_instance_uids().count(stored.sr_uid) == 1


@pytest.mark.usefixtures("dcmtk_installed")
def test_compressed_instance_goes_as_is_or_decompressed(
    tmp_path: Path, shared_orthanc: OrthancServer
) -> None:
    native = write_dataset(make_cxr_dataset(rows=64, cols=64, seed=7), tmp_path / "native.dcm")
    jpegls = compress_with_dcmtk(native, tmp_path / "jpegls.dcm", "jpegls_lossless")

    result = send_instance(destination_of(shared_orthanc), jpegls, calling_ae=CALLING_AE,
                           timeout=5)
    assert result.transfer_syntax_uid == JPEGLSLossless

    uncompressed_only = {"AcceptedTransferSyntaxes": [ExplicitVRLittleEndian,
                                                      ImplicitVRLittleEndian]}
    with running_orthanc(tmp_path / "plain", uncompressed_only) as plain:
        result = send_instance(destination_of(plain), jpegls, calling_ae=CALLING_AE, timeout=5)
        assert result.transfer_syntax_uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        assert plain.sop_instance_uids() == [result.sop_instance_uid]  # same UID, decoded


def test_send_errors_name_the_failure(tmp_path: Path) -> None:
    closed = Destination(ae_title="CLOSED", host="127.0.0.1", port=free_port())
    image = make_cxr_dataset(rows=32, cols=32)
    with pytest.raises(DestinationUnreachable, match="cannot connect to CLOSED"):
        send_instance(closed, image, calling_ae=CALLING_AE, timeout=2)
    store_refused = {"DicomAlwaysAllowStore": False}  # association accepted, C-STORE dropped
    with (running_orthanc(tmp_path / "orthanc", store_refused) as orthanc,
          pytest.raises(DestinationUnreachable, match="no C-STORE response from ORTHANC")):
        send_instance(destination_of(orthanc), image, calling_ae=CALLING_AE, timeout=5)
    rejecting = {"DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False}
    with running_orthanc(tmp_path / "rejecting", rejecting) as orthanc:
        with pytest.raises(DestinationRefused, match="Calling AE title not recognised") as err:
            send_instance(destination_of(orthanc), image, calling_ae=CALLING_AE, timeout=5)
        assert err.value.status is None


def test_a_prompt_rejection_is_always_reported_as_a_rejection(tmp_path: Path) -> None:
    """Orthanc on loopback rejects an unknown calling AE at once, often before pynetdicom's
    requesting thread has looked at the connection; each attempt must still say
    "rejected", with the reason, and never "aborted or timed out"."""
    image = make_cxr_dataset(rows=8, cols=8)
    rejecting = {"DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False}
    outcomes: collections.Counter[str] = collections.Counter()
    with running_orthanc(tmp_path / "rejecting", rejecting) as orthanc:
        for _ in range(150):
            try:
                send_instance(destination_of(orthanc), image, calling_ae=CALLING_AE, timeout=5)
            except ExportError as exc:
                outcomes[f"{type(exc).__name__}: {exc}"] += 1
    expected = (f"DestinationRefused: association rejected by {destination_of(orthanc).ae_title}"
                f" at 127.0.0.1:{orthanc.dicom_port}: Rejected Permanent, Service User: "
                "Calling AE title not recognised")
    assert outcomes == {expected: 150}


@requires_openssl
def test_tls_destination_receives_the_export(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    with running_orthanc(tmp_path / "orthanc", pki.orthanc_tls_config(),
                         probe_tls=pki.client_context()) as orthanc:
        secure = Destination(ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port,
                             tls=True)
        settings = make_settings(
            tmp_path, f"sqlite:///{tmp_path / 'radnode.db'}",
            dicom={"tls": {"ca_file": str(pki.ca_file), "cert_file": str(pki.client_cert),
                           "key_file": str(pki.client_key)}},
            destinations=[secure.model_dump()],
        )
        database = Database.from_settings(settings, migrate=True)
        store = InstanceStore(settings.storage.root, min_free_mb=1, max_used_percent=100)
        try:
            stored = store_report(database, store)
            [export_id] = queue(database, stored, secure)
            service = ExportService.from_settings(settings, database.sessions, store)
            assert service.deliver_due(now=T0) == [export_id]
            assert export_row(database, export_id).state == ExportState.SENT
            assert orthanc.sop_instance_uids() == [stored.sr_uid]

            plain = secure.model_copy(update={"tls": False})
            with pytest.raises(DestinationUnreachable):
                send_instance(plain, build_report_sr(make_cxr_dataset(rows=32, cols=32)),
                              calling_ae=CALLING_AE, timeout=3)
        finally:
            database.engine.dispose()


@pytest.fixture
def dx_only_scp() -> Iterator[tuple[Destination, list[int]]]:
    """A minimal Storage SCP that accepts DX images only and answers ``statuses[0]``."""
    statuses = [0x0000]
    ae = AE(ae_title="DXONLY")
    ae.add_supported_context(DigitalXRayImageStorageForPresentation,
                             [ExplicitVRLittleEndian, ImplicitVRLittleEndian])

    def on_store(_event: Any) -> int:
        return statuses[0]

    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield Destination(ae_title="DXONLY", host="127.0.0.1", port=port), statuses
    finally:
        server.shutdown()


def test_store_statuses_and_missing_contexts(
    dx_only_scp: tuple[Destination, list[int]]
) -> None:
    destination, statuses = dx_only_scp
    image = make_cxr_dataset(rows=32, cols=32)

    statuses[0] = 0xB000  # stored with coercion: delivered, flagged
    result = send_instance(destination, image, calling_ae=CALLING_AE, timeout=5)
    assert (result.status, result.is_warning) == (0xB000, True)

    statuses[0] = 0xA700
    with pytest.raises(DestinationRefused, match="0xA700 Refused: Out of Resources") as err:
        send_instance(destination, image, calling_ae=CALLING_AE, timeout=5)
    assert err.value.status == 0xA700

    statuses[0] = 0x0000
    report = build_report_sr(image)
    with pytest.raises(DestinationRefused, match="no presentation context for Comprehensive SR"):
        send_instance(destination, report, calling_ae=CALLING_AE, timeout=5)
    with pytest.raises(DestinationRefused, match="no presentation context for Comprehensive SR"):
        send_instances(destination, [image, report], calling_ae=CALLING_AE, timeout=5)
