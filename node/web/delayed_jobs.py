"""Delayed drafting jobs on the triage page: waiting or running longer than a threshold.

A job is *delayed* when it is QUEUED or RETRYING since longer than ``[jobs]
delayed_after_seconds`` (counted from when it was last put on the queue), or RUNNING since
longer than that (counted from its claim). Each row names the worker process that holds it
and that worker's last heartbeat, so an admin tells a slow draft from a lost one.

*Re-queue now* (:func:`requeue_now`) takes the job from whoever holds it: QUEUED, no
holder, no lease, enqueued again. Exactly-once drafting is kept by the unique report per
job: if the previous holder still finishes, the first recorded draft wins and the other
attempt is discarded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from node.db.models import Job, Study, WorkerHeartbeat
from node.states import JobState, StudyState

REQUEUE_STATES = (JobState.QUEUED, JobState.RETRYING, JobState.RUNNING)
DELAYED_LIMIT = 100


@dataclass(frozen=True)
class DelayedJob:
    """A job waiting or running too long, with its holder's heartbeat if it has one."""

    job: Job
    study: Study
    since: dt.datetime
    waited_seconds: float
    heartbeat: WorkerHeartbeat | None

    @property
    def holder_is_current(self) -> bool:
        """Whether the heartbeat is of the process that claimed the job (not a later run)."""
        return (self.heartbeat is not None
                and self.heartbeat.incarnation == self.job.worker_incarnation)


def delayed_jobs(session: Session, now: dt.datetime, after_seconds: float) -> list[DelayedJob]:
    """Jobs QUEUED, RETRYING or RUNNING for longer than ``after_seconds``, oldest first."""
    cutoff = now - dt.timedelta(seconds=after_seconds)
    rows = session.execute(
        select(Job, Study).join(Study, Study.id == Job.study_id).where(or_(
            and_(Job.state == JobState.RUNNING, Job.started_at < cutoff),
            and_(Job.state.in_([JobState.QUEUED, JobState.RETRYING]),
                 Job.enqueued_at < cutoff),
        )).order_by(Job.id).limit(DELAYED_LIMIT)).all()
    names = {job.worker_name for job, _ in rows if job.worker_name}
    beats = {beat.worker_name: beat for beat in session.scalars(
        select(WorkerHeartbeat).where(WorkerHeartbeat.worker_name.in_(names)))} if names else {}
    delayed = []
    for job, study in rows:
        since = (job.started_at if job.state == JobState.RUNNING else job.enqueued_at) or now
        delayed.append(DelayedJob(job, study, since, max((now - since).total_seconds(), 0.0),
                                  beats.get(job.worker_name or "")))
    delayed.sort(key=lambda item: item.since)
    return delayed


def requeue_now(job: Job, study: Study, now: dt.datetime) -> dict[str, Any]:
    """Take a waiting or running job from its holder and make it QUEUED again.

    The caller enqueues the job id after commit. A RUNNING job's interrupted attempt is
    not counted.

    Returns
    -------
    dict
        What the job was (state, holder, attempts), for the audit trail.
    """
    details: dict[str, Any] = {"previous_state": job.state.name, "attempts": job.attempts,
                               "worker": job.worker_name}
    if job.state == JobState.RUNNING:
        job.attempts = max(0, job.attempts - 1)
    job.state = JobState.QUEUED
    job.enqueued_at = now
    job.lease_expires_at = None
    job.worker_name = job.worker_incarnation = None
    study.state = StudyState.QUEUED
    return details


__all__ = ["REQUEUE_STATES", "DelayedJob", "delayed_jobs", "requeue_now"]
