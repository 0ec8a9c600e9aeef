"""Running one drafting job: claim, draft, record — idempotent under redelivery.

:func:`run_draft_job` is what both the Celery task and the in-process queue
call. It returns the delay before another attempt, or ``None`` when the job
needs no more work (drafted, failed for good, or owned by someone else).
"""

from __future__ import annotations

import datetime as dt
import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from node.config import Destination, JobSettings, QualitySettings
from node.db.models import AuditEvent, Instance, Job, Report, Study
from node.db.types import utcnow
from node.exports.service import queue_exports
from node.logs import log_event
from node.quality.labels import DraftLabelling, Labeler, default_labeler, label_draft
from node.reports.drafts import StoredSR, write_draft_sr
from node.reports.sr_content import ModelProvenance, ReportContent
from node.states import JobState, ReportState, StudyState
from node.storage import InstanceStore
from workers.errors import ModelUnavailableError, is_permanent
from workers.heartbeat import JOBS_IN_FLIGHT, WorkerIdentity
from workers.inference.degeneracy import DraftQuality, assess_draft, describe
from workers.instance_source import InstanceProvider, InstanceRef, SharedFolderInstances

logger = logging.getLogger(__name__)


class DraftLike(Protocol):
    """What a drafting engine returns (see ``workers.inference.drafting``)."""

    @property
    def findings(self) -> str: ...

    @property
    def impression(self) -> str: ...

    @property
    def raw_text(self) -> str: ...

    def to_json_dict(self) -> dict[str, Any]: ...


def draft_quality(draft: DraftLike) -> DraftQuality:
    """The draft's degeneracy verdict: the drafter's own, else judged from its text alone.

    A drafter built on :func:`workers.inference.drafting.draft_study` knows whether
    generation reached the end token; another drafter's text is still checked for loops
    and misplaced headers.
    """
    quality = getattr(draft, "quality", None)
    if isinstance(quality, DraftQuality):
        return quality
    return assess_draft(draft.raw_text or f"{draft.findings} {draft.impression}")


#: Drafts a study from its instance files, with the indication if known.
Drafter = Callable[[Sequence[Path], str | None], DraftLike]


@dataclass
class JobContext:
    """What a job needs: database, storage, the drafter, the policy and where SRs go.

    ``quality`` names the urgent observations; ``labeler`` labels each draft (the node's
    CheXpert labeler when ``None``).
    """

    sessions: sessionmaker[Session]
    store: InstanceStore
    drafter: Drafter
    model: ModelProvenance
    policy: JobSettings
    destinations: Sequence[Destination]
    quality: QualitySettings = field(default_factory=QualitySettings)
    labeler: Labeler | None = None
    language: str | None = None
    """RFC 5646 tag of the drafts' language (``[reports] language``)."""
    instances: InstanceProvider | None = None
    """Where instances are read: the storage folder (``None``) or the node over HTTP."""
    holder: WorkerIdentity | None = None
    """The beating worker process that claims jobs (``None``: no heartbeat, the jobs'
    leases are ``[jobs] lease_seconds``)."""

    def instance_provider(self) -> InstanceProvider:
        """The provider of the study's instance files for a job attempt."""
        return self.instances or SharedFolderInstances(self.store)


@dataclass(frozen=True)
class _Claim:
    job_id: int
    study_id: int
    attempt: int
    study_uid: str
    instances: list[InstanceRef]
    indication: str | None
    incarnation: str | None


def _backoff(policy: JobSettings, attempt: int) -> float:
    return float(min(policy.retry_backoff_max_seconds,
                     policy.retry_backoff_seconds * 2 ** max(0, attempt - 1)))


def _audit(session: Session, now: dt.datetime, action: str, job: Job, **details: Any) -> None:
    session.add(AuditEvent(at=now, actor="worker", action=action, object_type="job",
                           object_id=str(job.id), study_id=job.study_id, details=details or None))


def _claim(ctx: JobContext, job_id: int, now: dt.datetime) -> _Claim | None:
    with ctx.sessions.begin() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state in (JobState.SUCCEEDED, JobState.FAILED):
            return None
        if job.state == JobState.RUNNING and job.lease_expires_at and job.lease_expires_at > now:
            return None  # another worker holds it
        study = session.get(Study, job.study_id)
        assert study is not None
        if job.attempts >= ctx.policy.max_attempts:
            _fail(session, job, study, now, "AttemptsExhausted",
                  f"no attempt finished in {job.attempts} tries", None)
            return None
        job.state = JobState.RUNNING
        job.attempts += 1
        job.started_at = now
        holder = ctx.holder
        lease = holder.lease_seconds if holder is not None else ctx.policy.lease_seconds
        job.lease_expires_at = now + dt.timedelta(seconds=lease)
        job.worker_name = holder.name if holder is not None else None
        job.worker_incarnation = holder.incarnation if holder is not None else None
        study.state = StudyState.DRAFTING
        _audit(session, now, "job_started", job, attempt=job.attempts)
        instances = [
            InstanceRef(sop, series, path)
            for sop, series, path in session.execute(
                select(Instance.sop_instance_uid, Instance.series_instance_uid, Instance.path)
                .where(Instance.study_id == study.id, Instance.purged_at.is_(None))
                .order_by(Instance.id)
            )
        ]
        return _Claim(job.id, study.id, job.attempts, study.study_instance_uid, instances,
                      study.reason_for_exam, job.worker_incarnation)


def _fail(session: Session, job: Job, study: Study, now: dt.datetime, error_class: str,
          message: str, trace: str | None) -> None:
    job.state = JobState.FAILED
    job.finished_at = now
    job.lease_expires_at = None
    job.error_class, job.error_message, job.error_traceback = error_class, message, trace
    study.state = StudyState.FAILED
    study.state_reason = f"drafting failed: {error_class}"
    _audit(session, now, "job_failed", job, error=error_class)


def _record_success(ctx: JobContext, claim: _Claim, draft: DraftLike, sr: StoredSR,
                    labelling: DraftLabelling, quality: DraftQuality,
                    now: dt.datetime) -> bool:
    """Record the draft; ``False`` when another attempt's draft was recorded first."""
    try:
        with ctx.sessions.begin() as session:
            job = session.get(Job, claim.job_id, with_for_update=True)
            study = session.get(Study, claim.study_id)
            assert job is not None and study is not None
            report = Report(
                study_id=study.id, job_id=job.id, state=ReportState.DRAFT,
                findings=draft.findings, impression=draft.impression, raw_text=draft.raw_text,
                degenerate=quality.degenerate,
                degeneracy_reasons=quality.reason_values() or None,
                model_name=ctx.model.name, model_version=ctx.model.version,
                device_uid=ctx.model.device_uid, created_at=now,
                sop_instance_uid=sr.sop_instance_uid,
                series_instance_uid=sr.series_instance_uid, sr_path=sr.path,
                pending_sr_data=sr.data,
                **(sr.index.columns() if sr.index is not None else {}),
                labels=labelling.labels_json(),
            )
            session.add(report)
            session.flush()
            queue_exports(session, report, ctx.destinations, now=now)
            job.state = JobState.SUCCEEDED
            job.finished_at = now
            job.lease_expires_at = None
            job.error_class = job.error_message = job.error_traceback = None
            if study.state in (StudyState.DRAFTING, StudyState.QUEUED):
                study.state = StudyState.DRAFTED
                study.state_reason = None
            study.urgent = labelling.urgent
            study.urgent_findings = labelling.flags or None
            job.worker_name = job.worker_incarnation = None
            _audit(session, now, "job_succeeded", job, attempt=claim.attempt)
    except IntegrityError:
        # The unique report-per-job constraint: a redelivered copy got there first.
        # Its SR has the same UIDs; remove this attempt's file unless it is the same one.
        with ctx.sessions() as session:
            kept = session.scalar(select(Report.sr_path).where(Report.job_id == claim.job_id))
        if sr.path is not None and kept != sr.path:
            ctx.store.remove(sr.path)
        log_event(logger, logging.INFO, "draft_already_recorded", job_id=claim.job_id)
        return False
    return True


def _superseded(job: Job, claim: _Claim) -> bool:
    """Whether this attempt lost the job: finished, released, or claimed again since."""
    return (job.state != JobState.RUNNING or job.attempts != claim.attempt
            or job.worker_incarnation != claim.incarnation)


def _record_failure(ctx: JobContext, claim: _Claim, exc: BaseException,
                    now: dt.datetime) -> float | None:
    permanent = is_permanent(exc)
    with ctx.sessions.begin() as session:
        job = session.get(Job, claim.job_id, with_for_update=True)
        study = session.get(Study, claim.study_id)
        assert job is not None and study is not None
        if _superseded(job, claim):
            return None  # another attempt holds or finished the job: leave it to that one
        if isinstance(exc, ModelUnavailableError):
            # The worker is broken, not the job: back to the queue without an attempt.
            job.state = JobState.QUEUED
            job.attempts = max(0, job.attempts - 1)
            job.lease_expires_at = None
            job.worker_name = job.worker_incarnation = None
            job.enqueued_at = now
            study.state = StudyState.QUEUED
            _audit(session, now, "job_handed_back", job, error=type(exc).__name__)
            return None
        trace = "".join(traceback.format_exception(exc))
        message = str(exc)[:2000]
        if permanent or job.attempts >= ctx.policy.max_attempts:
            _fail(session, job, study, now, type(exc).__name__, message, trace)
            return None
        delay = _backoff(ctx.policy, job.attempts)
        job.state = JobState.RETRYING
        job.lease_expires_at = None
        job.worker_name = job.worker_incarnation = None
        job.enqueued_at = now + dt.timedelta(seconds=delay)
        job.error_class, job.error_message, job.error_traceback = type(exc).__name__, message, trace
        study.state = StudyState.QUEUED
        _audit(session, now, "job_retrying", job, error=type(exc).__name__, delay=delay)
        return delay


def run_draft_job(ctx: JobContext, job_id: int) -> float | None:
    """Run job ``job_id`` once.

    Parameters
    ----------
    ctx
        Database, storage, drafter and retry policy.
    job_id
        Primary key of the job.

    Returns
    -------
    float or None
        Seconds to wait before the next attempt; ``None`` when nothing is left
        to do (drafted, failed for good, or being run elsewhere).

    Raises
    ------
    ModelUnavailableError
        When this process's model cannot be loaded: the job is back in the queue
        (QUEUED, no attempt counted) for another worker to take.
    """
    claim = _claim(ctx, job_id, utcnow())
    if claim is None:
        log_event(logger, logging.INFO, "job_skipped", job_id=job_id)
        return None
    log_event(logger, logging.INFO, "job_running", job_id=job_id, study_id=claim.study_id,
              attempt=claim.attempt)
    provider = ctx.instance_provider()
    try:
        with JOBS_IN_FLIGHT.track(job_id), \
                provider.local_copies(claim.study_uid, claim.instances) as paths:
            draft = ctx.drafter(paths, claim.indication)
            quality = draft_quality(draft)
            findings = draft.findings or draft.raw_text
            labeler = ctx.labeler or default_labeler(ctx.quality.labeler_rules_dir)
            labelling = label_draft(labeler, findings, draft.impression,
                                    ctx.quality.urgent_observations,
                                    include_uncertain=ctx.quality.urgent_uncertain)
            sr = write_draft_sr(
                ctx.store if provider.shares_storage else None,
                paths,
                ReportContent(findings=findings, impression=draft.impression,
                              observations=labelling.observations, urgent=labelling.urgent,
                              flags=labelling.flags,
                              degeneracy=describe(quality.reason_values())),
                ctx.model,
                language=ctx.language,
            )
    except Exception as exc:
        delay = _record_failure(ctx, claim, exc, utcnow())
        log_event(logger, logging.WARNING, "job_attempt_failed", job_id=job_id,
                  study_id=claim.study_id, error=type(exc).__name__,
                  retry_in=delay)
        if isinstance(exc, ModelUnavailableError):
            raise
        return delay
    if _record_success(ctx, claim, draft, sr, labelling, quality, utcnow()):
        log_event(logger, logging.INFO, "job_succeeded", job_id=job_id,
                  study_id=claim.study_id, urgent=labelling.urgent,
                  degenerate=quality.degenerate)
    return None
