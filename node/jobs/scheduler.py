"""Creating drafting jobs for stable studies and finding lost ones again.

The database is the source of truth. A job row is written in the same
transaction that makes the study QUEUED; its id goes on the queue only after
that commit. The :class:`Reconciler` re-enqueues jobs whose message or worker
was lost, so nothing depends on the broker keeping its data:

* a worker killed, frozen or cut off stops renewing its jobs' leases (its
  heartbeat does that), so they expire within ``[worker] lost_after_seconds``;
* a broker that could not be reached, or that restarted (a new run id), may have
  lost messages: when it answers again every waiting job is enqueued again at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from node.config import JobSettings
from node.db.models import AuditEvent, Job, Study
from node.db.types import utcnow
from node.jobs.bundle_identity import BundleIdentity
from node.jobs.queue import WorkQueue
from node.logs import log_event
from node.periodic import PeriodicThread
from node.states import JobState, StudyState

logger = logging.getLogger(__name__)

BROKER_DOWN = "\x00down"
"""What the reconciler notes as the broker's identity while it cannot be reached."""


class DraftScheduler:
    """Turn STABLE studies into QUEUED jobs for the configured model.

    Parameters
    ----------
    sessions
        Database sessions.
    work_queue
        Where job ids go after commit.
    bundle
        The model the jobs are for; ``None`` leaves studies STABLE until a
        bundle is installed.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        work_queue: WorkQueue,
        bundle: BundleIdentity | None,
    ) -> None:
        self.sessions = sessions
        self.work_queue = work_queue
        self.bundle = bundle
        self._failed_lock = threading.Lock()
        self._failed_enqueues = 0

    def take_failed_enqueues(self) -> int:
        """How many enqueues failed since the last call (the broker was unreachable)."""
        with self._failed_lock:
            failed, self._failed_enqueues = self._failed_enqueues, 0
        return failed

    def on_stable(self, session: Session, study: Study) -> Callable[[], None] | None:
        """Assembly hook: create or reuse the study's job; enqueue after commit."""
        if self.bundle is None:
            study.state_reason = "waiting for a model bundle"
            return None
        now = utcnow()
        job = session.execute(
            select(Job).where(Job.study_id == study.id, Job.model_version == self.bundle.job_key)
        ).scalar_one_or_none()
        if job is None:
            job = Job(study_id=study.id, model_version=self.bundle.job_key)
            session.add(job)
        elif job.state == JobState.SUCCEEDED:
            return None
        job.state = JobState.QUEUED
        job.enqueued_at = now
        job.error_class = job.error_message = job.error_traceback = None
        study.state = StudyState.QUEUED
        session.flush()
        session.add(
            AuditEvent(at=now, actor="system", action="job_queued", object_type="job",
                       object_id=str(job.id), study_id=study.id,
                       details={"model": self.bundle.job_key})
        )
        job_id = job.id
        return lambda: self.enqueue(job_id)

    def enqueue(self, job_id: int, delay_seconds: float = 0.0) -> None:
        """Send a job id to the queue; a broker failure is left to the reconciler."""
        try:
            task_id = self.work_queue.enqueue_draft(job_id, delay_seconds=delay_seconds)
        except Exception as exc:  # broker down: the job stays QUEUED in the database
            with self._failed_lock:
                self._failed_enqueues += 1
            log_event(logger, logging.WARNING, "enqueue_failed", job_id=job_id,
                      error=type(exc).__name__)
            return
        log_event(logger, logging.INFO, "job_enqueued", job_id=job_id, task_id=task_id)


class Reconciler:
    """Periodically re-enqueue jobs the broker or a worker lost.

    Parameters
    ----------
    settings
        Lease, re-queue age and period.
    scheduler
        Used to enqueue and to schedule studies left STABLE.
    """

    def __init__(self, settings: JobSettings, scheduler: DraftScheduler) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self._broker_seen: str | None = None
        """The broker's run id at the last check; ``BROKER_DOWN`` when unreachable."""
        self._periodic = PeriodicThread("reconciler", settings.reconcile_seconds,
                                        self._reconcile_now)

    def broker_lost_messages(self) -> bool:
        """Check the broker; whether it may have lost messages since the last check.

        True when it answers after being unreachable (or after an enqueue failed), or
        answers with another run id (it restarted). The first check only notes the id.
        """
        failed = self.scheduler.take_failed_enqueues()
        try:
            identity = self.scheduler.work_queue.broker_identity()
        except Exception as exc:
            if self._broker_seen != BROKER_DOWN:
                log_event(logger, logging.WARNING, "broker_unreachable",
                          error=type(exc).__name__)
            self._broker_seen = BROKER_DOWN
            return False
        if identity is None:  # no broker: the in-process queue
            return False
        previous, self._broker_seen = self._broker_seen, identity
        lost = failed > 0 or previous == BROKER_DOWN or (
            previous is not None and previous != identity)
        if lost:
            log_event(logger, logging.WARNING, "broker_back", restarted=previous != identity,
                      failed_enqueues=failed)
        return lost

    def reconcile(
        self, now: dt.datetime | None = None, *, requeue_all_waiting: bool = False
    ) -> list[int]:
        """One pass; return the ids of jobs enqueued again.

        ``requeue_all_waiting`` treats every QUEUED or RETRYING job as lost (used
        at start-up, since the in-process queue keeps nothing across restarts and a
        broker may have restarted with the node, and when the broker answers again
        after an outage or a restart).

        * RUNNING past its lease: the worker is gone; the job becomes RETRYING.
        * QUEUED or RETRYING untouched for ``requeue_after_seconds``: the message
          is presumed lost.
        * STABLE studies without a job (no bundle earlier): scheduled now.

        A RETRYING job whose back-off has not ended is enqueued with the delay left.
        """
        if self.broker_lost_messages():
            requeue_all_waiting = True
        now = now or utcnow()
        stale = now - dt.timedelta(seconds=self.settings.requeue_after_seconds)
        if requeue_all_waiting:
            stale = now + dt.timedelta(days=3650)  # back-offs not over included
        requeued: list[tuple[int, float]] = []
        with self.scheduler.sessions.begin() as session:
            jobs = session.scalars(
                select(Job).where(
                    or_(
                        (Job.state == JobState.RUNNING) & (Job.lease_expires_at < now),
                        Job.state.in_([JobState.QUEUED, JobState.RETRYING])
                        & (Job.enqueued_at < stale),
                    )
                ).with_for_update(skip_locked=True)
            ).all()
            for job in jobs:
                delay = 0.0
                if job.state == JobState.RUNNING:
                    job.state = JobState.RETRYING
                    job.error_class = "WorkerLost"
                    job.error_message = (
                        f"the worker {job.worker_name} stopped renewing the job's lease"
                        if job.worker_name else "the worker stopped holding the job's lease")
                    job.worker_name = job.worker_incarnation = None
                    job.lease_expires_at = None
                elif job.enqueued_at is not None and job.enqueued_at > now:
                    delay = (job.enqueued_at - now).total_seconds()  # back-off not over
                if delay == 0.0:
                    job.enqueued_at = now
                requeued.append((job.id, delay))
            stable_ids = list(
                session.scalars(select(Study.id).where(Study.state == StudyState.STABLE))
            )
        for job_id, delay in requeued:
            log_event(logger, logging.WARNING, "job_requeued", job_id=job_id,
                      delay_seconds=round(delay, 1))
            self.scheduler.enqueue(job_id, delay_seconds=delay)
        for study_id in stable_ids:
            self._schedule_stable(study_id)
        return [job_id for job_id, _ in requeued]

    def _schedule_stable(self, study_id: int) -> None:
        with self.scheduler.sessions.begin() as session:
            study = session.get(Study, study_id)
            if study is None or study.state != StudyState.STABLE:
                return
            after_commit = self.scheduler.on_stable(session, study)
        if after_commit is not None:
            after_commit()

    def _reconcile_now(self) -> None:
        self.reconcile()

    def start(self, *, requeue_all_waiting: bool = False) -> None:
        """Reconcile once now (after a restart), then periodically in a thread."""
        try:
            self.reconcile(requeue_all_waiting=requeue_all_waiting)
        except Exception:
            logger.exception("reconcile_failed")
        self._periodic.start(run_now=False)

    def stop(self) -> None:
        """Stop the periodic pass."""
        self._periodic.stop()
