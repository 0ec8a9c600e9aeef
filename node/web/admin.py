"""Admin pages: triage of failures (with actions) and the read-only configuration view.

Triage lists failed drafting jobs (error, traceback, attempts, history from the audit
trail), failed or retrying exports, and ignored studies with their reasons. Each action is
a CSRF-checked POST, audited with the admin's id:

* job: ``retry`` (QUEUED again with its attempts reset, enqueued on the node's work
  queue), ``discard`` (the study becomes IGNORED), ``acknowledge`` (leaves the list);
* delayed job (waiting or running longer than ``[jobs] delayed_after_seconds``, see
  :mod:`node.web.delayed_jobs`): ``requeue`` (taken from its holder, QUEUED, enqueued now);
* export: ``retry`` (PENDING now, its maximum age restarting), ``discard`` (no more
  attempts), ``acknowledge`` (leaves the list);
* quarantined instance: ``accept`` into its study, ``discard``
  (:mod:`node.web.quarantine_view`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from node.db.models import AuditEvent, Export, Job, Report, Study
from node.db.types import utcnow
from node.dicom.refusals import REFUSAL_ACTIONS
from node.jobs.bundle_identity import read_bundle_identity
from node.logs import log_event
from node.states import ExportState, JobState, StudyState
from node.web.delayed_jobs import REQUEUE_STATES, delayed_jobs, requeue_now
from node.web.deps import AdminDep, CsrfAdminDep, RowId, audit, get_context, render
from node.web.quarantine_view import DONE_MESSAGES as QUARANTINE_DONE
from node.web.quarantine_view import quarantine_rows

logger = logging.getLogger(__name__)
router = APIRouter()

JOB_ACTIONS = ("retry", "discard", "acknowledge", "requeue")
EXPORT_ACTIONS = ("retry", "discard", "acknowledge")
DONE_MESSAGES = {
    "job-retry": "The job is queued again.",
    "job-retry-later": "The job is queued again; the reconciler will hand it to a worker.",
    "job-discard": "The job is discarded; the study is now ignored.",
    "job-acknowledge": "The job failure is acknowledged.",
    "job-requeue": "The job is queued again now.",
    "export-retry": "The export will be attempted now.",
    "export-discard": "The export is discarded; it will not be attempted again.",
    "export-acknowledge": "The export failure is acknowledged.",
    **QUARANTINE_DONE,
}
IGNORED_LIMIT = 50
REFUSAL_LIMIT = 50


@dataclass(frozen=True)
class FailedJob:
    """A failed job with its study and history."""

    job: Job
    study: Study
    history: list[AuditEvent]


@dataclass(frozen=True)
class ExportProblem:
    """A failed or retrying export with its report and study."""

    export: Export
    report: Report
    study: Study


@router.get("/admin/triage")
def triage(request: Request, viewer: AdminDep) -> Response:
    """The triage page."""
    ctx = get_context(request)
    show_all = request.query_params.get("show") == "all"
    with ctx.database.sessions.begin() as session:
        job_query = select(Job, Study).join(Study, Study.id == Job.study_id).where(
            Job.state == JobState.FAILED)
        if not show_all:
            job_query = job_query.where(Job.acknowledged_at.is_(None))
        job_rows = session.execute(job_query.order_by(Job.finished_at.desc(), Job.id)).all()
        ids = [str(job.id) for job, _ in job_rows]
        history: dict[str, list[AuditEvent]] = {i: [] for i in ids}
        if ids:
            for event in session.scalars(
                    select(AuditEvent).where(AuditEvent.object_type == "job",
                                             AuditEvent.object_id.in_(ids))
                    .order_by(AuditEvent.at, AuditEvent.id)):
                history[event.object_id or ""].append(event)
        jobs = [FailedJob(job, study, history[str(job.id)]) for job, study in job_rows]
        export_query = (
            select(Export, Report, Study)
            .join(Report, Report.id == Export.report_id)
            .join(Study, Study.id == Report.study_id)
            .where(Export.state.in_([ExportState.FAILED, ExportState.RETRYING])))
        if not show_all:
            export_query = export_query.where(Export.acknowledged_at.is_(None))
        exports = [ExportProblem(*row) for row in session.execute(
            export_query.order_by(Export.state, Export.created_at, Export.id))]
        ignored = list(session.scalars(
            select(Study).where(Study.state == StudyState.IGNORED)
            .order_by(Study.last_received_at.desc()).limit(IGNORED_LIMIT)))
        refusals = edge_refusals(session)
        quarantined = quarantine_rows(session, show_all=show_all)
        retrying_jobs = len(session.scalars(select(Job.id).where(
            Job.state == JobState.RETRYING)).all())
        delayed = delayed_jobs(session, utcnow(), ctx.settings.jobs.delayed_after_seconds)
        audit(session, viewer, "triage_viewed", "triage",
              details={"jobs": len(jobs), "exports": len(exports),
                       "quarantined": len(quarantined), "delayed": len(delayed)})
    return render(request, "triage.html", {
        "nav": "triage", "jobs": jobs, "exports": exports, "ignored": ignored,
        "quarantined": quarantined,
        "delayed": delayed, "delayed_after": ctx.settings.jobs.delayed_after_seconds,
        "retrying_jobs": retrying_jobs, "show_all": show_all,
        "done": DONE_MESSAGES.get(request.query_params.get("done", "")),
        "ignored_limit": IGNORED_LIMIT, "refusals": refusals, "refusal_limit": REFUSAL_LIMIT,
    })


def edge_refusals(session: Session) -> list[AuditEvent]:
    """The latest refusals at the DICOM edge: associations turned away and instances
    over a size limit (newest first)."""
    return list(session.scalars(
        select(AuditEvent).where(AuditEvent.action.in_(REFUSAL_ACTIONS))
        .order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(REFUSAL_LIMIT)))


def _back(done: str) -> Response:
    return RedirectResponse(f"/admin/triage?done={done}", status_code=303)


@router.post("/admin/jobs/{job_id}/{action}")
def job_action(job_id: RowId, action: str, request: Request,
               viewer: CsrfAdminDep) -> Response:
    """Retry, discard or acknowledge a failed job; re-queue a delayed one now."""
    if action not in JOB_ACTIONS:
        raise HTTPException(404, "unknown action")
    ctx = get_context(request)
    now = utcnow()
    with ctx.database.sessions.begin() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise HTTPException(404, "no such job")
        allowed = REQUEUE_STATES if action == "requeue" else (JobState.FAILED,)
        if job.state not in allowed:
            raise HTTPException(409, f"the job is {job.state.name}")
        study = session.get_one(Study, job.study_id)
        details: dict[str, Any] = {"error_class": job.error_class, "attempts": job.attempts}
        if action == "requeue":
            details = requeue_now(job, study, now)
        elif action == "retry":
            job.state = JobState.QUEUED
            job.attempts = 0
            job.enqueued_at = now
            job.finished_at = None
            job.lease_expires_at = None
            job.acknowledged_at = job.acknowledged_by_id = None
            job.error_class = job.error_message = job.error_traceback = None
            study.state = StudyState.QUEUED
            study.state_reason = None
        else:
            job.acknowledged_at = now
            job.acknowledged_by_id = viewer.id
            if action == "discard":
                study.state = StudyState.IGNORED
                study.state_reason = "drafting discarded by an administrator"
        verb = {"retry": "job_retry_requested", "discard": "job_discarded",
                "acknowledge": "job_acknowledged", "requeue": "job_requeue_requested"}[action]
        audit(session, viewer, verb, "job", job.id, study_id=study.id, details=details,
              now=now)
    log_event(logger, logging.INFO, "triage_action", action=f"job_{action}", job_id=job_id,
              user_id=viewer.id)
    if action in ("retry", "requeue"):
        if ctx.work_queue is None:
            return _back("job-retry-later")
        try:
            ctx.work_queue.enqueue_draft(job_id)
        except Exception as exc:  # broker down: the reconciler enqueues it later
            log_event(logger, logging.WARNING, "enqueue_failed", job_id=job_id,
                      error=type(exc).__name__)
            return _back("job-retry-later")
    return _back(f"job-{action}")


@router.post("/admin/exports/{export_id}/{action}")
def export_action(export_id: RowId, action: str, request: Request,
                  viewer: CsrfAdminDep) -> Response:
    """Retry, discard or acknowledge a failed or retrying export."""
    if action not in EXPORT_ACTIONS:
        raise HTTPException(404, "unknown action")
    ctx = get_context(request)
    now = utcnow()
    with ctx.database.sessions.begin() as session:
        export = session.get(Export, export_id, with_for_update=True)
        if export is None:
            raise HTTPException(404, "no such export")
        allowed = ((ExportState.FAILED,) if action == "acknowledge"
                   else (ExportState.FAILED, ExportState.RETRYING))
        if export.state not in allowed:
            raise HTTPException(409, f"the export is {export.state.name}")
        report = session.get_one(Report, export.report_id)
        details: dict[str, Any] = {"destination_ae": export.destination_ae,
                                   "previous_state": export.state.name,
                                   "attempts": export.attempts,
                                   "last_error": (export.last_error or "")[:500]}
        if action == "retry":
            export.state = ExportState.PENDING
            export.attempts = 0
            export.next_attempt_at = now
            export.created_at = now
            export.acknowledged_at = export.acknowledged_by_id = None
        else:
            if action == "discard":
                export.state = ExportState.FAILED
                export.next_attempt_at = None
            export.acknowledged_at = now
            export.acknowledged_by_id = viewer.id
        verb = {"retry": "export_retry_requested", "discard": "export_discarded",
                "acknowledge": "export_acknowledged"}[action]
        audit(session, viewer, verb, "export", export.id, study_id=report.study_id,
              details=details, now=now)
    log_event(logger, logging.INFO, "triage_action", action=f"export_{action}",
              export_id=export_id, user_id=viewer.id)
    if action == "retry" and ctx.exporter is not None:
        ctx.exporter.notify()
    return _back(f"export-{action}")


def _masked_url(url: str) -> str:
    if not url:
        return ""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL (e.g. redis://): hide everything after '@'
        scheme, _, rest = url.partition("://")
        host = rest.rsplit("@", 1)[-1]
        return f"{scheme}://***@{host}" if "@" in rest else url


@router.get("/admin/config")
def config_view(request: Request, viewer: AdminDep) -> Response:
    """The node's configuration, read-only, without secrets."""
    ctx = get_context(request)
    settings = ctx.settings
    try:
        bundle = read_bundle_identity(settings.model.bundle)
        bundle_error = None
    except ValueError as exc:
        bundle, bundle_error = None, str(exc)
    return render(request, "config.html", {
        "nav": "config", "settings": settings, "bundle": bundle, "bundle_error": bundle_error,
        "database_url": _masked_url(settings.database.url),
        "broker_url": _masked_url(settings.broker.url),
        "capacity": ctx.store.capacity(),
    })
