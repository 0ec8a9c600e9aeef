"""Admin triage actions, monitoring, configuration, metrics and probes (both databases)."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from node.db.models import Export, Job, Study
from node.db.types import utcnow
from node.reports.signoff import sign_report
from node.states import ExportState, JobState, Role, StudyState
from node.web.admin import _masked_url
from tests.integration.web_seed import (
    HTML,
    WebEnv,
    audit_events,
    build_web_env,
    seed_drafted_study,
    seed_failed_export,
    seed_failed_job,
    seed_study,
    seed_user,
    user_by_name,
)

pytestmark = pytest.mark.usefixtures("fast_hashing")


@pytest.fixture
def admin(web: WebEnv) -> tuple[int, str]:
    """An admin, signed in: (user id, CSRF token)."""
    user_id = seed_user(web.database, "root", Role.ADMIN, display_name="Admin^Ada")
    return user_id, web.login("root")


def test_triage_lists_failures_with_their_history(web: WebEnv, admin: tuple[int, str]) -> None:
    """Failed jobs (class, message, traceback, attempts, history), exports, ignored studies."""
    seed_failed_job(web.database, accession="ACC-JOB")
    seed_failed_export(web.database, web.store)
    seed_failed_export(web.database, web.store, state=ExportState.RETRYING,
                       destination_ae="ARCHIVE")
    seed_study(web.database, patient_name="IGNORED^ONE", patient_id="I1", accession="ACC-IGN",
               state=StudyState.IGNORED, state_reason="modality is not CR or DX")
    page = web.client.get("/admin/triage", headers=HTML)
    assert page.status_code == 200
    text = page.text
    assert "ImageDecodeError" in text and "truncated codestream" in text
    assert "Traceback (most recent call last)" in text
    assert "3 attempts" in text and "job retrying" in text
    assert "association rejected by PACS" in text and "ARCHIVE" in text
    assert "modality is not CR or DX" in text and "ACC-IGN" in text
    assert [e.user_id for e in audit_events(web.database, "triage_viewed")] == [admin[0]]


def test_retry_failed_job_requeues_it(web: WebEnv, admin: tuple[int, str]) -> None:
    """Retry: job QUEUED with attempts reset, study QUEUED, enqueued, audited."""
    study_id, job_id = seed_failed_job(web.database)
    response = web.client.post(f"/admin/jobs/{job_id}/retry", data={"csrf_token": admin[1]})
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/triage?done=job-retry"
    assert web.queue.enqueued == [job_id]
    with web.database.sessions() as session:
        job = session.get_one(Job, job_id)
        assert (job.state, job.attempts, job.error_class) == (JobState.QUEUED, 0, None)
        assert session.get_one(Study, study_id).state == StudyState.QUEUED
    events = audit_events(web.database, "job_retry_requested")
    assert [(e.user_id, e.object_id) for e in events] == [(admin[0], str(job_id))]
    assert events[0].details is not None and events[0].details["error_class"] == (
        "ImageDecodeError")
    again = web.client.post(f"/admin/jobs/{job_id}/retry", data={"csrf_token": admin[1]})
    assert again.status_code == 409


def test_acknowledge_and_discard_failed_jobs(web: WebEnv, admin: tuple[int, str]) -> None:
    """Acknowledged jobs leave the list; a discarded job's study becomes IGNORED."""
    _, acknowledged = seed_failed_job(web.database, accession="ACC-ACK")
    discarded_study, discarded = seed_failed_job(web.database, accession="ACC-DIS")
    csrf = {"csrf_token": admin[1]}
    assert web.client.post(f"/admin/jobs/{acknowledged}/acknowledge",
                           data=csrf).status_code == 303
    assert web.client.post(f"/admin/jobs/{discarded}/discard", data=csrf).status_code == 303
    assert web.client.post(f"/admin/jobs/{discarded}/explode", data=csrf).status_code == 404
    page = web.client.get("/admin/triage", headers=HTML).text
    assert f'id="job-{acknowledged}"' not in page and f'id="job-{discarded}"' not in page
    everything = web.client.get("/admin/triage?show=all", headers=HTML).text
    assert f'id="job-{acknowledged}"' in everything
    with web.database.sessions() as session:
        study = session.get_one(Study, discarded_study)
        assert study.state == StudyState.IGNORED and "discarded" in (study.state_reason or "")
        assert session.get_one(Job, acknowledged).acknowledged_by_id == admin[0]
    assert len(audit_events(web.database, "job_acknowledged")) == 1
    assert len(audit_events(web.database, "job_discarded")) == 1
    assert web.queue.enqueued == []


def test_retry_failed_export_restarts_it_now(web: WebEnv, admin: tuple[int, str]) -> None:
    """Retry: PENDING, due now, its maximum age restarting; the exporter is woken."""
    _, export_id = seed_failed_export(web.database, web.store)
    before = utcnow()
    response = web.client.post(f"/admin/exports/{export_id}/retry",
                               data={"csrf_token": admin[1]})
    assert response.status_code == 303
    assert web.exporter.notified == 1
    with web.database.sessions() as session:
        export = session.get_one(Export, export_id)
        assert export.state == ExportState.PENDING and export.attempts == 0
        assert export.next_attempt_at is not None and export.next_attempt_at >= before
        assert export.created_at >= before
    events = audit_events(web.database, "export_retry_requested")
    assert [(e.user_id, e.details and e.details["previous_state"]) for e in events] == [
        (admin[0], "FAILED")]
    assert f'id="export-{export_id}"' not in web.client.get("/admin/triage", headers=HTML).text


def test_discard_and_acknowledge_exports(web: WebEnv, admin: tuple[int, str]) -> None:
    """A retrying export can be stopped; a failed one acknowledged; both leave the list."""
    _, retrying = seed_failed_export(web.database, web.store, state=ExportState.RETRYING,
                                     destination_ae="ARCHIVE")
    _, failed = seed_failed_export(web.database, web.store)
    csrf = {"csrf_token": admin[1]}
    assert web.client.post(f"/admin/exports/{retrying}/acknowledge",
                           data=csrf).status_code == 409
    assert web.client.post(f"/admin/exports/{retrying}/discard", data=csrf).status_code == 303
    assert web.client.post(f"/admin/exports/{failed}/acknowledge",
                           data=csrf).status_code == 303
    with web.database.sessions() as session:
        stopped = session.get_one(Export, retrying)
        assert stopped.state == ExportState.FAILED and stopped.next_attempt_at is None
        assert stopped.acknowledged_at is not None
        assert session.get_one(Export, failed).acknowledged_by_id == admin[0]
    page = web.client.get("/admin/triage", headers=HTML).text
    assert f'id="export-{retrying}"' not in page and f'id="export-{failed}"' not in page


def test_metrics_report_states_storage_and_latencies(web: WebEnv) -> None:
    """Prometheus text with radnode_* gauges and latency summaries; no login needed."""
    now = utcnow()
    first = seed_drafted_study(web.database, web.store, received_at=now - dt.timedelta(
        minutes=30), drafted_after=dt.timedelta(seconds=50))
    seed_drafted_study(web.database, web.store, patient_name="SECOND^ONE", seed=4,
                       received_at=now - dt.timedelta(minutes=20),
                       drafted_after=dt.timedelta(seconds=70))
    seed_failed_job(web.database)
    seed_user(web.database, "mcurie")
    with web.database.sessions.begin() as session:
        sign_report(session, web.store, first.report_id, user_by_name(web.database, "mcurie"),
                    "F.", "I.", now=now - dt.timedelta(minutes=10),
                    destinations=web.settings.destinations)
    response = web.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert 'radnode_studies{state="DRAFTED"} 1' in text
    assert 'radnode_studies{state="SIGNED"} 1' in text
    assert 'radnode_jobs{state="FAILED"} 1' in text
    assert 'radnode_exports{state="PENDING"} 1' in text
    assert re.search(r"^radnode_storage_free_bytes \d+$", text, re.M)
    assert "# TYPE radnode_draft_latency_seconds summary" in text
    assert "radnode_draft_latency_seconds_count 2" in text
    assert 'radnode_draft_latency_seconds{quantile="0.5"} 60' in text
    assert "radnode_signoff_latency_seconds_count 1" in text
    assert "DOE" not in text and "PID-" not in text


def test_probes(tmp_path: Path, database_url: str, web: WebEnv) -> None:
    """/healthz answers; /readyz is 200 when ready and 503 when storage is past its mark."""
    assert web.client.get("/healthz").json() == {"status": "ok"}
    ready = web.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "database": "ok", "storage": "ok"}
    full = build_web_env(tmp_path / "full", database_url,
                         storage={"root": str(tmp_path / "full-storage"),
                                  "min_free_mb": 10**9})
    try:
        response = full.client.get("/readyz")
        assert response.status_code == 503 and response.json()["checks"]["storage"] == "full"
    finally:
        full.close()


def test_monitoring_and_configuration_pages(web: WebEnv, admin: tuple[int, str]) -> None:
    """Charts are inline SVG; configuration shows the bundle and destinations, no secrets."""
    seed_drafted_study(web.database, web.store)
    page = web.client.get("/admin/monitoring", headers=HTML)
    assert page.status_code == 200
    assert page.text.count("<svg") >= 5 and "Studies received per hour" in page.text
    assert "<script src=\"http" not in page.text
    config = web.client.get("/admin/config", headers=HTML)
    assert config.status_code == 200
    text = config.text
    assert "radnode-cxr-demo" in text and "Apache-2.0" in text and "PACS" in text
    secret = (Path(web.settings.web.secret_key_file)).read_text().strip()
    assert secret not in text and "secret" not in text.lower().replace("secrets are never", "")
    assert _masked_url("postgresql+psycopg://radnode:hunter2@db:5432/radnode") == (
        "postgresql+psycopg://radnode:***@db:5432/radnode")
    assert "hunter2" not in _masked_url("redis://:hunter2@redis:6379/0")


def test_triage_lists_refusals_at_the_dicom_edge(web: WebEnv, admin: tuple[int, str]) -> None:
    """Refused associations and instances over a size limit are listed for the admin."""
    from node.dicom.admission import Refusal
    from node.dicom.refusals import RefusalRecorder

    recorder = RefusalRecorder(web.database.sessions)
    recorder.association(Refusal("10.1.2.3", "association request not completed in time"))
    recorder.association(Refusal("10.1.2.3", "association request not completed in time"))
    recorder.instance(calling_ae="MODALITY", sop_instance_uid="1.2.3.4", status=0xA700,
                      reason="the image declares 268435456 pixels, over 67108864",
                      details={"limit": "max_pixels"})
    page = web.client.get("/admin/triage", headers=HTML)
    assert page.status_code == 200
    section = page.text[page.text.index('id="refusals"'):]
    assert "ip:10.1.2.3" in section and "not completed in time" in section
    assert "ae:MODALITY" in section and "0xA700" in section and "268435456 pixels" in section
    # A peer that keeps trying is audited once a minute, not once per attempt.
    assert len(audit_events(web.database, "association_refused")) == 1
