"""Delayed jobs on the triage page and "re-queue now" (both databases).

A job waiting or running longer than ``[jobs] delayed_after_seconds`` is listed with the
worker that holds it and that worker's last heartbeat. Re-queueing takes it from its
holder (admin only, CSRF-checked, audited); if the holder was only slow and finishes
after another worker, the job still has exactly one report.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from node.db.models import Job, Report, Study, WorkerHeartbeat
from node.db.types import utcnow
from node.states import JobState, Role, StudyState
from tests.integration.web_seed import (
    HTML,
    MODEL,
    WebEnv,
    audit_events,
    seed_study,
    seed_user,
    store_instances,
)
from workers.heartbeat import WorkerIdentity
from workers.jobs import JobContext, run_draft_job

pytestmark = pytest.mark.usefixtures("fast_hashing")

HOLDER = WorkerIdentity("radnode-draft-gpu0@host-a", "a" * 32, 30.0)
OTHER = WorkerIdentity("radnode-draft-gpu1@host-b", "b" * 32, 30.0)


@dataclass(frozen=True)
class _Draft:
    findings: str = "No acute cardiopulmonary process."
    impression: str = "Normal chest."

    @property
    def raw_text(self) -> str:
        return f"{self.findings}\n{self.impression}"

    def to_json_dict(self) -> dict[str, Any]:
        return {"findings": self.findings, "impression": self.impression}


def _job(web: WebEnv, state: JobState, *, minutes_ago: float, accession: str,
         holder: WorkerIdentity | None = None) -> tuple[int, int]:
    """A study with one job in ``state`` since ``minutes_ago``; return (study id, job id)."""
    study = seed_study(web.database, patient_name="DOE^JOHN", patient_id="PID-7",
                       accession=accession, state=StudyState.DRAFTING
                       if state == JobState.RUNNING else StudyState.QUEUED)
    since = utcnow() - dt.timedelta(minutes=minutes_ago)
    with web.database.sessions.begin() as session:
        job = Job(study_id=study.id, model_version=MODEL.device_uid, state=state,
                  attempts=1 if state == JobState.RUNNING else 0, enqueued_at=since,
                  started_at=since if state == JobState.RUNNING else None,
                  lease_expires_at=utcnow() + dt.timedelta(seconds=30)
                  if state == JobState.RUNNING else None,
                  worker_name=holder.name if holder else None,
                  worker_incarnation=holder.incarnation if holder else None)
        session.add(job)
        session.flush()
        return study.id, job.id


def _beat(web: WebEnv, identity: WorkerIdentity, seconds_ago: float) -> dt.datetime:
    at = utcnow() - dt.timedelta(seconds=seconds_ago)
    with web.database.sessions.begin() as session:
        session.add(WorkerHeartbeat(worker_name=identity.name, host="host-a", pid=4242,
                                    device="cuda:0", jobs_in_flight=1, started_at=at,
                                    last_beat_at=at, incarnation=identity.incarnation))
    return at


def test_triage_lists_delayed_jobs_with_their_worker_and_heartbeat(web: WebEnv) -> None:
    """RUNNING and waiting jobs past the threshold are listed; recent or finished ones not."""
    seed_user(web.database, "root", Role.ADMIN)
    web.login("root")
    _, running = _job(web, JobState.RUNNING, minutes_ago=12, accession="ACC-RUN",
                      holder=HOLDER)
    _, waiting = _job(web, JobState.QUEUED, minutes_ago=20, accession="ACC-WAIT")
    _, retrying = _job(web, JobState.RETRYING, minutes_ago=7, accession="ACC-RETRY")
    _, fresh = _job(web, JobState.QUEUED, minutes_ago=1, accession="ACC-FRESH")
    _, done = _job(web, JobState.SUCCEEDED, minutes_ago=30, accession="ACC-DONE")
    beat_at = _beat(web, HOLDER, seconds_ago=95)
    page = web.client.get("/admin/triage", headers=HTML)
    assert page.status_code == 200
    text = page.text
    for job_id in (running, waiting, retrying):
        assert f'id="delayed-job-{job_id}"' in text
    assert f'id="delayed-job-{fresh}"' not in text and f'id="delayed-job-{done}"' not in text
    row = text[text.index(f'id="delayed-job-{running}"'):]
    row = row[:row.index("</tr>")]
    assert HOLDER.name in row and "RUNNING" in row
    assert beat_at.strftime("%M:%S") in row, row
    assert f'action="/admin/jobs/{running}/requeue"' in row
    # oldest first: the QUEUED job waited 20 minutes, the RUNNING one 12, the RETRYING 7
    assert text.index(f"delayed-job-{waiting}") < text.index(f"delayed-job-{running}") \
        < text.index(f"delayed-job-{retrying}")
    events = audit_events(web.database, "triage_viewed")
    assert events[-1].details is not None and events[-1].details["delayed"] == 3


def test_requeue_needs_an_admin_and_a_csrf_token(web: WebEnv) -> None:
    """A radiologist, or an admin without the token, cannot take a job from its worker."""
    _, job_id = _job(web, JobState.RUNNING, minutes_ago=12, accession="ACC-R",
                     holder=HOLDER)
    seed_user(web.database, "rad", Role.RADIOLOGIST)
    token = web.login("rad")
    assert web.client.post(f"/admin/jobs/{job_id}/requeue",
                           data={"csrf_token": token}).status_code == 403
    seed_user(web.database, "root", Role.ADMIN)
    web.client.cookies.clear()
    web.login("root")
    assert web.client.post(f"/admin/jobs/{job_id}/requeue",
                           data={"csrf_token": "forged"}).status_code == 403
    with web.database.sessions() as session:
        job = session.get_one(Job, job_id)
        assert (job.state, job.worker_name) == (JobState.RUNNING, HOLDER.name)
    assert web.queue.enqueued == []
    assert audit_events(web.database, "job_requeue_requested") == []


def test_requeue_now_takes_the_job_and_it_is_drafted_once(web: WebEnv) -> None:
    """Re-queue a job whose worker is only slow: another worker drafts it, the slow one
    finishes later, and the job keeps exactly one report."""
    admin_id = seed_user(web.database, "root", Role.ADMIN)
    token = web.login("root")
    study = seed_study(web.database, patient_name="DOE^JANE", patient_id="PID-8",
                       accession="ACC-SLOW", state=StudyState.QUEUED)
    store_instances(web.database, web.store, study, 1, seed=3, rows=128)
    with web.database.sessions.begin() as session:
        job = Job(study_id=study.id, model_version=MODEL.device_uid, state=JobState.QUEUED,
                  enqueued_at=utcnow())
        session.add(job)
        session.flush()
        job_id = job.id

    release = threading.Event()
    drafting = threading.Event()

    def slow(paths: Sequence[Path], indication: str | None) -> _Draft:
        drafting.set()
        assert release.wait(30)
        return _Draft(findings="Slow worker's text.")

    def context(identity: WorkerIdentity, drafter: Any) -> JobContext:
        return JobContext(sessions=web.database.sessions, store=web.store, drafter=drafter,
                          model=MODEL, policy=web.settings.jobs, destinations=[],
                          holder=identity)

    results: list[float | None] = []
    slow_run = threading.Thread(
        target=lambda: results.append(run_draft_job(context(HOLDER, slow), job_id)))
    slow_run.start()
    assert drafting.wait(30)

    response = web.client.post(f"/admin/jobs/{job_id}/requeue", data={"csrf_token": token})
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/triage?done=job-requeue"
    assert web.queue.enqueued == [job_id]
    with web.database.sessions() as session:
        job = session.get_one(Job, job_id)
        assert (job.state, job.worker_name, job.lease_expires_at, job.attempts) == (
            JobState.QUEUED, None, None, 0)
    events = audit_events(web.database, "job_requeue_requested")
    assert [(e.user_id, e.object_id) for e in events] == [(admin_id, str(job_id))]
    assert events[0].details is not None
    assert events[0].details["previous_state"] == "RUNNING"
    assert events[0].details["worker"] == HOLDER.name

    assert run_draft_job(context(OTHER, lambda paths, indication: _Draft()), job_id) is None
    release.set()
    slow_run.join(30)
    assert results == [None]
    with web.database.sessions() as session:
        reports = session.scalars(select(Report).where(Report.job_id == job_id)).all()
        assert len(reports) == 1
        assert reports[0].findings == _Draft.findings  # the first recorded draft won
        job = session.get_one(Job, job_id)
        assert job.state == JobState.SUCCEEDED
        assert session.get_one(Study, study.id).state == StudyState.DRAFTED
        assert session.scalar(select(func.count()).select_from(Report)) == 1
    again = web.client.post(f"/admin/jobs/{job_id}/requeue", data={"csrf_token": token})
    assert again.status_code == 409
