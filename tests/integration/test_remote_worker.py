"""A worker without the shared folder: instances over WADO-RS with a service token.

The node's real web app runs in a uvicorn thread on a free port; the worker's job context
is built from settings with ``[worker] instance_source = "http"`` and a storage root of its
own, so the only way to the images is the node's HTTP service. Each database test runs
on SQLite and PostgreSQL.
"""

from __future__ import annotations

import errno
import http.server
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import undefer

from node.config import Destination, ExportSettings, InstanceSource, Settings
from node.db.models import AuditEvent, Export, Instance, Job, Report, ServiceToken, Study
from node.db.types import utcnow
from node.dicom.export import Sendable, SendResult
from node.dicom.ingest import InstanceIngestor
from node.exports.service import ExportService, queue_exports
from node.jobs.bundle_identity import read_bundle_identity
from node.reports import handover
from node.reports.handover import store_handed_over_srs
from node.runtime import Database
from node.states import ExportState, JobState, ReportState, StudyState
from node.storage import InstanceStore, StorageFullError
from node.web import create_app
from node.web.server import WebServer
from node.web.service_auth import issue_service_token, revoke_service_tokens
from tests.conftest import DEMO_BUNDLE_DIR, free_port, make_settings
from tests.dicom_factory import make_cxr_dataset, write_dataset
from tests.integration.qr_archive import ingest_files
from tests.integration.web_seed import seed_drafted_study, seed_study
from workers.context import BundleDrafter, build_job_context
from workers.errors import InstanceFetchError
from workers.heartbeat import JOBS_IN_FLIGHT
from workers.instance_source import HttpInstances, InstanceRef
from workers.jobs import DraftLike, run_draft_job

WORKER = "gpu-host-1"
PACS = Destination(ae_title="PACS", host="127.0.0.1", port=4242, exports="drafts_and_finals")


@dataclass
class RunningNode:
    """The node's database, storage and web server, and the study it holds."""

    settings: Settings
    database: Database
    store: InstanceStore
    web: WebServer
    study_uid: str
    series_uid: str
    sop_uids: list[str]

    def job_for_study(self) -> int:
        """Queue a drafting job for the study (as the scheduler does)."""
        identity = read_bundle_identity(DEMO_BUNDLE_DIR)
        assert identity is not None
        with self.database.sessions.begin() as session:
            study = session.scalars(select(Study).where(
                Study.study_instance_uid == self.study_uid)).one()
            study.state = StudyState.QUEUED
            job = Job(study_id=study.id, model_version=identity.job_key, state=JobState.QUEUED)
            session.add(job)
            session.flush()
            return job.id

    def token(self, username: str = WORKER) -> str:
        with self.database.sessions.begin() as session:
            return issue_service_token(session, username, actor="test")


@pytest.fixture
def running_node(tmp_path: Path, database_url: str) -> Iterator[RunningNode]:
    settings = make_settings(tmp_path / "node", database_url,
                             web={"secret_key": "k" * 48, "port": free_port()})
    database = Database.from_settings(settings, migrate=True)
    store = InstanceStore(settings.storage.root, min_free_mb=1, max_used_percent=100)
    first = make_cxr_dataset(rows=160, cols=160, seed=7)
    lateral = make_cxr_dataset(rows=160, cols=160, seed=8, study_uid=first.StudyInstanceUID,
                               series_uid=first.SeriesInstanceUID, view_position="LL",
                               instance_number=2)
    files = [write_dataset(ds, tmp_path / "files" / f"{i}.dcm")
             for i, ds in enumerate((first, lateral))]
    ingest_files(InstanceIngestor(store, database.sessions), files)
    web = WebServer(create_app(settings, database, store), "127.0.0.1", settings.web.port)
    web.start()
    try:
        yield RunningNode(settings, database, store, web, str(first.StudyInstanceUID),
                          str(first.SeriesInstanceUID),
                          [str(first.SOPInstanceUID), str(lateral.SOPInstanceUID)])
    finally:
        web.stop()
        database.engine.dispose()


def worker_settings(tmp_path: Path, node: RunningNode, token: str, **worker: object) -> Settings:
    """A worker's settings: same database, its own (empty) storage root, HTTP instances."""
    values: dict[str, object] = {
        "instance_source": "http", "node_url": node.web.url, "token": token,
        "scratch_dir": str(tmp_path / "scratch"), "device": "cpu", **worker,
    }
    return make_settings(tmp_path / "worker", node.settings.database.url, worker=values,
                         model={"bundle": str(DEMO_BUNDLE_DIR)}, jobs={"max_attempts": 3})


class RecordingDrafter:
    """The real demo-model drafter, noting which files each call was given."""

    def __init__(self) -> None:
        self.drafter = BundleDrafter(DEMO_BUNDLE_DIR, "cpu")
        self.calls: list[list[Path]] = []
        self.sop_uids: list[list[str]] = []
        self.in_flight: list[int] = []

    def __call__(self, paths: Sequence[Path], indication: str | None) -> DraftLike:
        self.calls.append(list(paths))
        self.sop_uids.append([str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                              for p in paths])
        self.in_flight.append(JOBS_IN_FLIGHT.count)
        return self.drafter(paths, indication)


@pytest.mark.usefixtures("demo_bundle_built")
def test_remote_worker_drafts_from_fetched_instances(tmp_path: Path,
                                                      running_node: RunningNode) -> None:
    node = running_node
    settings = worker_settings(tmp_path, node, node.token())
    assert settings.worker.instance_source is InstanceSource.HTTP
    recording = RecordingDrafter()
    ctx = build_job_context(settings, sessions=node.database.sessions, drafter=recording)
    job_id = node.job_for_study()

    assert run_draft_job(ctx, job_id) is None

    scratch = tmp_path / "scratch"
    [paths] = recording.calls
    assert all(p.parent.parent == scratch for p in paths)
    assert recording.sop_uids == [node.sop_uids]  # read while the job ran
    assert recording.in_flight == [1] and JOBS_IN_FLIGHT.count == 0
    assert list(scratch.iterdir()) == []  # the per-job folder is gone
    worker_files = [p for p in (tmp_path / "worker" / "storage").rglob("*") if p.is_file()]
    assert worker_files == []  # nothing written worker-side
    with node.database.sessions() as session:
        job = session.get_one(Job, job_id)
        report = session.scalars(select(Report).where(Report.job_id == job_id)
                                 .options(undefer(Report.pending_sr_data))).one()
        assert job.state is JobState.SUCCEEDED
        assert report.state is ReportState.DRAFT
        assert report.sr_path is None and report.pending_sr_data is not None
        fetched = session.scalars(select(AuditEvent)
                                  .where(AuditEvent.action == "instances_fetched")).all()
    assert [(e.actor, e.object_id) for e in fetched] == [(WORKER, node.study_uid)] * 2

    assert store_handed_over_srs(node.database.sessions, node.store) == 1
    assert store_handed_over_srs(node.database.sessions, node.store) == 0
    with node.database.sessions() as session:
        report = session.scalars(select(Report).where(Report.job_id == job_id)
                                 .options(undefer(Report.pending_sr_data))).one()
        assert report.sr_path is not None and report.pending_sr_data is None
        sr = dcmread(node.store.absolute(report.sr_path))
    assert str(sr.SOPInstanceUID) == report.sop_instance_uid
    assert str(sr.StudyInstanceUID) == node.study_uid
    assert (report.sr_verification_flag, report.sr_series_description) == (
        "UNVERIFIED", sr.SeriesDescription)
    evidence = {str(sop.ReferencedSOPInstanceUID)
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for sop in series.ReferencedSOPSequence}
    assert evidence == set(node.sop_uids)


@pytest.mark.usefixtures("demo_bundle_built")
def test_unreachable_node_is_a_transient_job_error(tmp_path: Path,
                                                   running_node: RunningNode) -> None:
    node = running_node
    dead_url = f"http://127.0.0.1:{free_port()}"
    settings = worker_settings(tmp_path, node, node.token(), node_url=dead_url,
                               fetch_attempts=2)
    calls: list[Sequence[Path]] = []

    def drafter(paths: Sequence[Path], indication: str | None) -> DraftLike:
        calls.append(paths)
        raise AssertionError("never reached: the instances could not be fetched")

    ctx = build_job_context(settings, sessions=node.database.sessions, drafter=drafter)
    job_id = node.job_for_study()

    delay = run_draft_job(ctx, job_id)

    assert delay is not None and delay > 0
    assert calls == []
    assert list((tmp_path / "scratch").iterdir()) == []
    with node.database.sessions() as session:
        job = session.get_one(Job, job_id)
        assert job.state is JobState.RETRYING
        assert job.error_class == "InstanceFetchError"
        assert "in 2 tries" in (job.error_message or "")
        assert session.scalars(select(Report)).all() == []


def _retrieve_path(node: RunningNode, sop_uid: str) -> str:
    return (f"/dicomweb/studies/{node.study_uid}/series/{node.series_uid}"
            f"/instances/{sop_uid}")


def test_service_token_reads_instances_and_nothing_else(running_node: RunningNode) -> None:
    node = running_node
    token = node.token()
    bearer = {"Authorization": f"Bearer {token}"}
    base = node.web.url

    retrieved = httpx.get(base + _retrieve_path(node, node.sop_uids[0]), headers=bearer)
    assert retrieved.status_code == 200
    assert retrieved.headers["content-type"].startswith("multipart/related")
    study = httpx.get(f"{base}/dicomweb/studies/{node.study_uid}", headers=bearer)
    assert study.status_code == 200

    for path in ("/dicomweb/studies", f"/dicomweb/studies/{node.study_uid}/metadata",
                 f"/dicomweb/studies/{node.study_uid}/series"):
        assert httpx.get(base + path, headers=bearer).status_code == 403, path
    assert httpx.get(f"{base}/", headers=bearer).status_code == 401  # no page without login
    assert httpx.get(f"{base}/admin/monitoring", headers=bearer).status_code == 401

    wrong = httpx.get(base + _retrieve_path(node, node.sop_uids[0]),
                      headers={"Authorization": "Bearer rnw_not-a-token"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(base + _retrieve_path(node, node.sop_uids[0]),
                     headers={"Authorization": f"Basic {token}"}).status_code == 403

    with node.database.sessions.begin() as session:
        assert revoke_service_tokens(session, WORKER, actor="test") == 1
    revoked = httpx.get(base + _retrieve_path(node, node.sop_uids[0]), headers=bearer)
    assert revoked.status_code == 401

    with node.database.sessions() as session:
        actions = [(e.action, e.actor) for e in session.scalars(
            select(AuditEvent).where(AuditEvent.action.in_(
                ["instances_fetched", "service_token_refused", "service_token_issued",
                 "service_tokens_revoked"])).order_by(AuditEvent.id))]
        stored = session.scalars(select(ServiceToken)).one()
    assert actions == [
        ("service_token_issued", "test"), ("instances_fetched", WORKER),
        ("instances_fetched", WORKER), ("service_token_refused", "-"),
        ("service_tokens_revoked", "test"), ("service_token_refused", "-"),
    ]
    assert stored.token_hash != token and token not in stored.token_hash
    assert stored.last_used_at is not None and stored.revoked_at is not None


def test_a_person_account_gets_no_service_token(running_node: RunningNode) -> None:
    from node.states import Role
    from node.users import UserError, create_user

    with running_node.database.sessions.begin() as session:
        create_user(session, "dr.who", "correct horse battery", role=Role.RADIOLOGIST,
                    display_name="Who^Doctor")
    with running_node.database.sessions() as session, \
            pytest.raises(UserError, match="radiologist account, not a worker"):
        issue_service_token(session, "dr.who")


def test_fetcher_refuses_a_file_that_is_not_the_instance_asked_for(
        tmp_path: Path, running_node: RunningNode) -> None:
    node = running_node
    first, second = node.sop_uids
    with node.database.sessions.begin() as session:
        rows = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
        rows[first].path = rows[second].path  # the index points at the wrong file
    fetcher = HttpInstances(node.web.url, node.token(), attempts=1, scratch_dir=tmp_path)
    ref = InstanceRef(first, node.series_uid, "")
    with pytest.raises(InstanceFetchError, match="different instance"), \
            fetcher.local_copies(node.study_uid, [ref]):
        pass
    assert list(tmp_path.glob("radnode-job-*")) == []


# -- handed-over SRs that cannot be stored --------------------------------------------------


class AcceptingSender:
    """A destination that accepts every instance; remembers the SOP Instance UIDs sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __call__(self, destination: Destination, items: Sequence[Sendable], *,
                 calling_ae: str, timeout: float,
                 ssl_context: ssl.SSLContext | None = None) -> list[SendResult]:
        results = []
        for item in items:
            header = (item if isinstance(item, Dataset)
                      else dcmread(item, stop_before_pixels=True))
            self.sent.append(str(header.SOPInstanceUID))
            results.append(SendResult(str(header.SOPInstanceUID), str(header.SOPClassUID),
                                      str(header.file_meta.TransferSyntaxUID), 0x0000))
        return results


def _export_service(node: RunningNode, sender: AcceptingSender) -> ExportService:
    return ExportService(ExportSettings(), [PACS], node.database.sessions, node.store,
                         calling_ae="RADNODE", sender=sender)


def _queued_export(node: RunningNode) -> tuple[int, str]:
    """A drafted study whose draft SR is stored, with a PENDING export to PACS."""
    seeded = seed_drafted_study(node.database, node.store, patient_id="PID-0002",
                                accession="ACC0002", seed=3)
    with node.database.sessions.begin() as session:
        report = session.get_one(Report, seeded.report_id)
        [export] = queue_exports(session, report, [PACS])
        return export.id, str(report.sop_instance_uid)


def _handed_over(node: RunningNode, data: bytes, *, sop_uid: str | None = None) -> tuple[int, int]:
    """A study drafted by a remote worker whose handed-over SR is ``data``;
    return (job id, report id)."""
    study = seed_study(node.database, patient_name="ROE^RICHARD", patient_id="PID-0003",
                       accession="ACC0003", state=StudyState.DRAFTED)
    with node.database.sessions.begin() as session:
        job = Job(study_id=study.id, model_version="remote-model", state=JobState.SUCCEEDED,
                  attempts=1)
        session.add(job)
        session.flush()
        report = Report(study_id=study.id, job_id=job.id, state=ReportState.DRAFT,
                        findings="No acute findings.", impression="Normal chest.",
                        sop_instance_uid=sop_uid or str(generate_uid()), pending_sr_data=data)
        session.add(report)
        session.flush()
        queue_exports(session, report, [PACS])
        return job.id, report.id


def _drafted_remotely(tmp_path: Path, node: RunningNode) -> int:
    """Draft the node's study on a remote worker; return the report id (SR not stored)."""
    settings = worker_settings(tmp_path, node, node.token())
    ctx = build_job_context(settings, sessions=node.database.sessions,
                            drafter=RecordingDrafter())
    job_id = node.job_for_study()
    assert run_draft_job(ctx, job_id) is None
    with node.database.sessions() as session:
        return session.scalars(select(Report.id).where(Report.job_id == job_id)).one()


@pytest.mark.usefixtures("demo_bundle_built")
def test_corrupt_handed_over_sr_is_failed_visibly_and_the_rest_go_on(
        tmp_path: Path, running_node: RunningNode) -> None:
    """Bytes that are not DICOM fail their job for the triage page and leave the queue;
    the export pass still stores the other SRs and delivers what is due."""
    node = running_node
    export_id, sent_uid = _queued_export(node)
    bad_job, bad_report = _handed_over(node, b"not a DICOM file at all")
    good_report = _drafted_remotely(tmp_path, node)
    sender = AcceptingSender()

    claimed = _export_service(node, sender).deliver_due()

    assert export_id in claimed and sent_uid in sender.sent
    with node.database.sessions() as session:
        assert session.get_one(Export, export_id).state is ExportState.SENT
        good = session.get_one(Report, good_report, options=[undefer(Report.pending_sr_data)])
        assert good.sr_path is not None and good.pending_sr_data is None
        assert session.get(Report, bad_report) is None  # out of the queue, exports with it
        assert session.scalars(select(Export).where(Export.report_id == bad_report)).all() == []
        job = session.get_one(Job, bad_job)
        assert job.state is JobState.FAILED and job.error_class == "UnusableSR"
        assert "InvalidDicomError" in (job.error_message or "")
        assert session.get_one(Study, job.study_id).state is StudyState.FAILED
        [event] = session.scalars(select(AuditEvent).where(
            AuditEvent.action == "handed_over_sr_rejected")).all()
        assert event.object_id == str(bad_report) and event.study_id == job.study_id
    assert store_handed_over_srs(node.database.sessions, node.store) == 0


@pytest.mark.usefixtures("demo_bundle_built")
def test_full_storage_keeps_the_sr_queued_without_stopping_exports(
        tmp_path: Path, running_node: RunningNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full volume is transient: the SR waits for a later pass, the due export is sent."""
    node = running_node
    export_id, _ = _queued_export(node)
    report_id = _drafted_remotely(tmp_path, node)

    def full(relative_path: str, data: bytes) -> Path:
        raise StorageFullError(errno.ENOSPC, "storage volume is full")

    monkeypatch.setattr(node.store, "write", full)
    assert _export_service(node, AcceptingSender()).deliver_due() == [export_id]
    with node.database.sessions() as session:
        report = session.get_one(Report, report_id, options=[undefer(Report.pending_sr_data)])
        assert report.sr_path is None and report.pending_sr_data is not None
        assert session.get_one(Export, export_id).state is ExportState.SENT

    monkeypatch.undo()
    assert store_handed_over_srs(node.database.sessions, node.store) == 1
    with node.database.sessions() as session:
        assert session.get_one(Report, report_id).sr_path is not None


@pytest.mark.usefixtures("demo_bundle_built")
def test_mismatched_handed_over_srs_do_not_block_later_ones(
        tmp_path: Path, running_node: RunningNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """An SR naming another SOP instance leaves the queue, so a full batch of them cannot
    hold back the SRs queued after them."""
    node = running_node
    monkeypatch.setattr(handover, "BATCH_SIZE", 1)
    seeded = seed_drafted_study(node.database, node.store, patient_id="PID-0004", seed=4)
    with node.database.sessions() as session:
        other_sr = node.store.absolute(
            session.get_one(Report, seeded.report_id).sr_path or "").read_bytes()
    bad_job, bad_report = _handed_over(node, other_sr)  # the SR of another report
    good_report = _drafted_remotely(tmp_path, node)

    assert store_handed_over_srs(node.database.sessions, node.store) == 0
    assert store_handed_over_srs(node.database.sessions, node.store) == 1
    with node.database.sessions() as session:
        assert session.get(Report, bad_report) is None
        assert session.get_one(Job, bad_job).state is JobState.FAILED
        assert session.get_one(Report, good_report).sr_path is not None


@pytest.mark.usefixtures("demo_bundle_built")
def test_purged_instances_are_not_handed_to_a_drafting_job(
        tmp_path: Path, running_node: RunningNode) -> None:
    """An instance whose file the retention clean-up removed is not in the job's list."""
    node = running_node
    kept, purged = node.sop_uids
    with node.database.sessions.begin() as session:
        row = session.scalars(select(Instance).where(Instance.sop_instance_uid == purged)).one()
        node.store.remove(row.path)
        row.purged_at = utcnow()
    recording = RecordingDrafter()
    ctx = build_job_context(worker_settings(tmp_path, node, node.token()),
                            sessions=node.database.sessions, drafter=recording)
    job_id = node.job_for_study()

    assert run_draft_job(ctx, job_id) is None

    assert recording.sop_uids == [[kept]]
    with node.database.sessions() as session:
        assert session.get_one(Job, job_id).state is JobState.SUCCEEDED


# -- the token's own safety ------------------------------------------------------------------


def test_token_command_issues_no_token_it_cannot_write(
        tmp_path: Path, running_node: RunningNode, monkeypatch: pytest.MonkeyPatch) -> None:
    from node.cli.main import main
    from node.web.service_auth import authenticate_service

    monkeypatch.setenv("RADNODE_DATABASE__URL", running_node.settings.database.url)
    existing = tmp_path / "existing.token"
    existing.write_text("kept\n")
    assert main(["user", "token", WORKER, "--output", str(existing)]) == 2
    assert existing.read_text() == "kept\n"
    with running_node.database.sessions() as session:
        assert session.scalars(select(ServiceToken)).all() == []

    fresh = tmp_path / "fresh.token"
    assert main(["user", "token", WORKER, "--output", str(fresh)]) == 0
    assert fresh.stat().st_mode & 0o777 == 0o600
    with running_node.database.sessions.begin() as session:
        assert authenticate_service(session, fresh.read_text().strip(), utcnow()) is not None


def test_fetcher_does_not_follow_a_redirect_with_its_token(tmp_path: Path) -> None:
    seen: list[str | None] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    elsewhere = http.server.HTTPServer(("127.0.0.1", 0), Elsewhere)

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{elsewhere.server_port}/x")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    node = http.server.HTTPServer(("127.0.0.1", 0), Redirecting)
    for server in (elsewhere, node):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fetcher = HttpInstances(f"http://127.0.0.1:{node.server_port}", "secret-token",
                                attempts=1, scratch_dir=tmp_path)
        ref = InstanceRef("1.2.3.4", "1.2.3.4.5", "")
        with pytest.raises(InstanceFetchError, match="302"), \
                fetcher.local_copies("1.2.3", [ref]):
            pass
    finally:
        node.shutdown()
        elsewhere.shutdown()
    assert seen == []
