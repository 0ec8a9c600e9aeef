"""A worker whose model fails to load: the job goes back untouched, the worker is broken.

The drafter is the real one (``workers.context.BundleDrafter``) on a bundle folder that
does not exist; the heartbeat is the real writer, read back by the monitoring view (both
databases).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import Settings
from node.db.models import Job, Study
from node.db.types import utcnow
from node.runtime import Database
from node.states import JobState, StudyState
from node.storage import InstanceStore
from node.web.worker_view import worker_panel
from tests.integration.web_seed import MODEL, seed_study, store_instances
from workers.context import BundleDrafter
from workers.errors import ModelUnavailableError
from workers.heartbeat import DeviceStatus, HeartbeatWriter, InFlightCounter
from workers.jobs import JobContext, run_draft_job


def test_model_that_fails_to_load_hands_the_job_back_and_marks_the_worker_broken(
        settings: Settings, database: Database, tmp_path: Path) -> None:
    store = InstanceStore(settings.storage.root, min_free_mb=1, max_used_percent=100)
    study = seed_study(database, patient_name="DOE^JANE", patient_id="PID-1",
                       accession="ACC-BROKEN", state=StudyState.QUEUED)
    store_instances(database, store, study, 1, seed=1, rows=64)
    with database.sessions.begin() as session:
        job = Job(study_id=study.id, model_version=MODEL.device_uid, state=JobState.QUEUED,
                  enqueued_at=utcnow())
        session.add(job)
        session.flush()
        job_id = job.id
    missing = tmp_path / "models" / "gone"
    drafter = BundleDrafter(missing, "cpu")
    writer = HeartbeatWriter(database.sessions, worker_name="radnode-draft-gpu9@host",
                             requested_device="cpu", model_name="demo", model_version="1",
                             period_seconds=1, counter=InFlightCounter(),
                             probe=lambda _: DeviceStatus("cpu"),
                             health=lambda: drafter.broken_reason)
    context = JobContext(sessions=database.sessions, store=store, drafter=drafter,
                         model=MODEL, policy=settings.jobs, destinations=[],
                         holder=writer.identity)

    with pytest.raises(ModelUnavailableError, match=str(missing)):
        run_draft_job(context, job_id)
    with database.sessions() as session:
        job = session.get_one(Job, job_id)
        assert (job.state, job.attempts, job.worker_name, job.lease_expires_at) == (
            JobState.QUEUED, 0, None, None)
        assert session.get_one(Study, study.id).state == StudyState.QUEUED
    assert drafter.broken_reason is not None and str(missing) in drafter.broken_reason
    with pytest.raises(ModelUnavailableError):  # broken for good: no second load
        run_draft_job(context, job_id)

    writer.beat()
    with database.sessions() as session:
        rows = worker_panel(session, settings, utcnow()).rows
    assert [(row.name, row.broken_reason) for row in rows] == [
        ("radnode-draft-gpu9@host", drafter.broken_reason)]
