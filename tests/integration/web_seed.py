"""Test data for the web app and sign-off: users, drafted studies, failed jobs and exports.

Studies are made the way the node makes them: DICOM files from
:func:`tests.dicom_factory.make_cxr_dataset` written into the store with their rows, and a
draft report whose SR is written by :func:`node.reports.drafts.write_draft_sr`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.config import Settings
from node.db.models import AuditEvent, Export, Instance, Job, Report, Study, User
from node.db.types import utcnow
from node.reports.drafts import write_draft_sr
from node.reports.sr_content import ModelProvenance, ReportContent
from node.runtime import Database
from node.states import ExportState, JobState, ReportState, Role, StudyState
from node.storage import InstanceStore
from node.users import create_user, use_password_hasher
from node.web import create_app
from tests.dicom_factory import make_cxr_dataset

PASSWORD = "correct horse battery"
#: Argon2id with cheap parameters: the defaults cost about a second per hash here.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
MODEL = ModelProvenance(name="radnode-cxr-demo", version="0.3.1", manufacturer="radnode",
                        device_uid="1.2.826.0.1.3680043.8.498.1000001", synthetic=True)
FINDINGS = "Heart size is normal. Small left pleural effusion. No pneumothorax."
IMPRESSION = "Small left pleural effusion."


@dataclass
class SeededStudy:
    """Ids of a study written by :func:`seed_drafted_study`."""

    study_id: int
    study_uid: str
    report_id: int
    instance_ids: list[int] = field(default_factory=list)


@contextmanager
def fast_password_hashing() -> Iterator[None]:
    """Hash with :data:`FAST_HASHER` inside the block."""
    previous = use_password_hasher(FAST_HASHER)
    try:
        yield
    finally:
        use_password_hasher(previous)


def seed_user(database: Database, username: str, role: Role = Role.RADIOLOGIST, *,
              display_name: str = "Curie^Marie", organization: str | None = "St Elsewhere",
              active: bool = True) -> int:
    """Create a user with :data:`PASSWORD`; return the id."""
    with database.sessions.begin() as session:
        user = create_user(session, username, PASSWORD, role=role, display_name=display_name,
                           organization=organization, actor="test")
        user.active = active
        return user.id


def store_instances(database: Database, store: InstanceStore, study: Study,
                    count: int, *, seed: int, rows: int,
                    image: NDArray[np.uint16] | None = None,
                    transfer_syntax: str | None = None) -> list[int]:
    """Write ``count`` images of ``study`` (PA, then lateral) with their rows.

    ``image`` gives 12-bit stored values to use instead of the factory's synthetic chest;
    ``transfer_syntax`` a (lossless) syntax to compress them to with pydicom's encoders.
    """
    series_uid = generate_uid()
    ids: list[int] = []
    with database.sessions.begin() as session:
        for number in range(1, count + 1):
            view = "PA" if number == 1 else "LL"
            ds = make_cxr_dataset(
                study_uid=study.study_instance_uid, series_uid=series_uid,
                patient_name=study.patient_name or "TEST^PATIENT",
                patient_id=study.patient_id or "TEST-0001",
                accession_number=study.accession_number or "ACC0001",
                view_position=view, instance_number=number, rows=rows, cols=rows,
                bits=12, seed=seed + number, windows=[(1800.0, 3000.0)], image=image,
            )
            if transfer_syntax is not None:
                ds.compress(transfer_syntax)
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            data = buffer.getvalue()
            digest = hashlib.sha256(data).hexdigest()
            relative = store.relative_path(study.study_instance_uid, series_uid,
                                           str(ds.SOPInstanceUID), digest)
            store.write(relative, data)
            instance = Instance(
                study_id=study.id, sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID), series_instance_uid=series_uid,
                series_number=1, instance_number=number, modality="DX", body_part="CHEST",
                view_position=view, transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                rows=rows, columns=rows, path=relative, size_bytes=len(data), sha256=digest,
            )
            session.add(instance)
            session.flush()
            ids.append(instance.id)
    return ids


def seed_study(database: Database, *, patient_name: str, patient_id: str, accession: str,
               state: StudyState, received_at: dt.datetime | None = None,
               urgent: bool = False, urgent_findings: list[str] | None = None,
               state_reason: str | None = None) -> Study:
    """Add a study row (no files)."""
    received_at = received_at or utcnow()
    with database.sessions.begin() as session:
        study = Study(
            study_instance_uid=str(generate_uid()), state=state, patient_id=patient_id,
            patient_name=patient_name, patient_birth_date="19600101", patient_sex="O",
            accession_number=accession, study_date="20240517", study_time="093000",
            study_description="XR CHEST PA", reason_for_exam="Shortness of breath",
            first_received_at=received_at, last_received_at=received_at,
            stable_at=received_at, urgent=urgent, urgent_findings=urgent_findings,
            state_reason=state_reason,
        )
        session.add(study)
        session.flush()
        return study


def seed_drafted_study(
    database: Database,
    store: InstanceStore,
    *,
    patient_name: str = "DOE^JANE",
    patient_id: str = "PID-0001",
    accession: str = "ACC0001",
    images: int = 1,
    urgent: bool = False,
    urgent_findings: list[str] | None = None,
    received_at: dt.datetime | None = None,
    drafted_after: dt.timedelta = dt.timedelta(seconds=40),
    findings: str = FINDINGS,
    impression: str = IMPRESSION,
    seed: int = 0,
    rows: int = 256,
    image: NDArray[np.uint16] | None = None,
    transfer_syntax: str | None = None,
) -> SeededStudy:
    """A DRAFTED study: stored images, a succeeded job and a draft report with its SR."""
    study = seed_study(database, patient_name=patient_name, patient_id=patient_id,
                       accession=accession, state=StudyState.DRAFTED,
                       received_at=received_at, urgent=urgent,
                       urgent_findings=urgent_findings)
    instance_ids = store_instances(database, store, study, images, seed=seed, rows=rows,
                                   image=image, transfer_syntax=transfer_syntax)
    with database.sessions.begin() as session:
        paths = [store.absolute(p) for p in session.scalars(
            select(Instance.path).where(Instance.study_id == study.id).order_by(Instance.id))]
    content = ReportContent(findings=findings, impression=impression, urgent=urgent,
                            flags=tuple(urgent_findings or ()))
    stored = write_draft_sr(store, paths, content, MODEL)
    drafted_at = study.first_received_at + drafted_after
    with database.sessions.begin() as session:
        job = Job(study_id=study.id, model_version=MODEL.device_uid, state=JobState.SUCCEEDED,
                  attempts=1, enqueued_at=study.first_received_at, finished_at=drafted_at)
        session.add(job)
        session.flush()
        report = Report(
            study_id=study.id, job_id=job.id, state=ReportState.DRAFT, findings=findings,
            impression=impression, raw_text=f"{findings}\n{impression}",
            model_name=MODEL.name, model_version=MODEL.version, device_uid=MODEL.device_uid,
            sop_instance_uid=stored.sop_instance_uid,
            series_instance_uid=stored.series_instance_uid, sr_path=stored.path,
            created_at=drafted_at,
        )
        session.add(report)
        session.flush()
        return SeededStudy(study.id, study.study_instance_uid, report.id, instance_ids)


TRACEBACK = """Traceback (most recent call last):
  File "workers/jobs.py", line 205, in run_draft_job
    draft = ctx.drafter(claim.paths, claim.indication)
  File "workers/inference/preprocess.py", line 291, in decode_first_frame
    raise ImageDecodeError(name, str(exc))
workers.inference.preprocess.ImageDecodeError: pixel data could not be decoded: \
JPEG 2000: truncated codestream
"""


def seed_failed_job(database: Database, *, accession: str = "ACC-FAIL",
                    attempts: int = 3) -> tuple[int, int]:
    """A FAILED study with a FAILED job and its audit history; return (study id, job id)."""
    study = seed_study(database, patient_name="ROE^RICHARD", patient_id="PID-0900",
                       accession=accession, state=StudyState.FAILED,
                       state_reason="drafting failed: ImageDecodeError")
    now = utcnow()
    with database.sessions.begin() as session:
        job = Job(study_id=study.id, model_version=MODEL.device_uid, state=JobState.FAILED,
                  attempts=attempts, enqueued_at=now, finished_at=now,
                  error_class="ImageDecodeError",
                  error_message="pixel data could not be decoded: JPEG 2000: truncated "
                                "codestream", error_traceback=TRACEBACK)
        session.add(job)
        session.flush()
        for index, action in enumerate(["job_queued", "job_started", "job_retrying",
                                        "job_started", "job_failed"]):
            session.add(AuditEvent(
                at=now - dt.timedelta(minutes=5 - index), actor="worker", action=action,
                object_type="job", object_id=str(job.id), study_id=study.id,
                details={"error": "ImageDecodeError"} if "fail" in action or "retry" in action
                else None,
            ))
        return study.id, job.id


def seed_failed_export(database: Database, store: InstanceStore, *,
                       state: ExportState = ExportState.FAILED,
                       destination_ae: str = "PACS") -> tuple[int, int]:
    """A drafted study whose draft SR export failed; return (study id, export id)."""
    seeded = seed_drafted_study(database, store, patient_name="POE^EDGAR",
                                patient_id="PID-0700", accession="ACC-EXP", seed=7)
    old = utcnow() - dt.timedelta(days=2)
    with database.sessions.begin() as session:
        export = Export(report_id=seeded.report_id, destination_ae=destination_ae,
                        state=state, attempts=9, created_at=old,
                        next_attempt_at=None if state == ExportState.FAILED else utcnow(),
                        last_error="association rejected by PACS: 0x0001 (permanent)")
        session.add(export)
        session.flush()
        return seeded.study_id, export.id


def user_by_name(database: Database, username: str) -> User:
    """Load a user (detached)."""
    with database.sessions() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
        session.expunge(user)
        return user


def write_bundle_manifest(folder: Path) -> Path:
    """A model bundle folder whose manifest names :data:`MODEL` (identity only, no weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({
        "name": MODEL.name, "version": MODEL.version, "device_uid": MODEL.device_uid,
        "synthetic": True, "licence": "Apache-2.0 (synthetic weights, no patient data)",
        "intended_use": "Demonstration of the drafting pipeline only; not a medical device.",
    }), encoding="utf-8")
    return folder


class RecordingQueue:
    """A work queue that records what is enqueued."""

    def __init__(self) -> None:
        self.enqueued: list[int] = []

    def enqueue_draft(self, job_id: int, *, delay_seconds: float = 0.0) -> str | None:
        self.enqueued.append(job_id)
        return None

    def broker_identity(self) -> str | None:
        return None

    def close(self) -> None:
        return None


class RecordingExporter:
    """Stands in for the export service: counts wake-ups."""

    def __init__(self) -> None:
        self.notified = 0

    def notify(self) -> None:
        self.notified += 1


@dataclass
class WebEnv:
    """A web app over a real database and store, with a test client."""

    settings: Settings
    database: Database
    store: InstanceStore
    queue: RecordingQueue
    exporter: RecordingExporter
    client: TestClient

    def login(self, username: str, password: str = PASSWORD) -> str:
        """Sign in; return the CSRF token of the new login."""
        page = self.client.get("/login")
        token = form_csrf(page.text)
        response = self.client.post("/login", data={
            "username": username, "password": password, "csrf_token": token, "next": "/"})
        assert response.status_code == 303, response.text
        return page_csrf(self.client.get("/", headers=HTML).text)

    def close(self) -> None:
        self.client.close()
        self.database.engine.dispose()


HTML = {"Accept": "text/html"}
DESTINATION = {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}


def form_csrf(html: str) -> str:
    """The ``csrf_token`` of the first form of a page."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def page_csrf(html: str) -> str:
    """The CSRF token of a signed-in page (its meta tag)."""
    match = re.search(r'<meta name="csrf-token" content="([^"]*)"', html)
    assert match and match.group(1), "no CSRF token in the page"
    return match.group(1)


def build_web_env(tmp_path: Path, database_url: str, **sections: Any) -> WebEnv:
    """Settings, migrated database, store, app and client, all under ``tmp_path``."""
    from tests.conftest import make_settings

    base: dict[str, Any] = {
        "web": {"secret_key_file": str(tmp_path / "web-secret.key")},
        "destinations": [DESTINATION],
        "model": {"bundle": str(write_bundle_manifest(tmp_path / "bundle"))},
    }
    base.update(sections)
    settings = make_settings(tmp_path, database_url, **base)
    database = Database.from_settings(settings, migrate=True)
    store = InstanceStore(settings.storage.root, min_free_mb=settings.storage.min_free_mb,
                          max_used_percent=settings.storage.max_used_percent)
    queue, exporter = RecordingQueue(), RecordingExporter()
    app = create_app(settings, database, store, exporter, queue)  # type: ignore[arg-type]
    client = TestClient(app, base_url="http://radnode.test", follow_redirects=False)
    return WebEnv(settings, database, store, queue, exporter, client)


def audit_events(database: Database, action: str) -> list[AuditEvent]:
    """Audit events of one action, oldest first."""
    with database.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                    .order_by(AuditEvent.id)))
