"""Storing the draft SRs that workers without the node's storage folder hand over.

A worker that fetches instances over HTTP cannot write into the node's storage. It builds
the draft SR as usual and records it in the report row (``reports.pending_sr_data``); the
node writes it to storage, sets ``sr_path`` and clears the bytes. The export service does
this at the start of each pass, so the SR is stored before its exports are claimed.

Each report is handled in a transaction of its own, so one bad row never holds up the
others:

* a storage failure (a full volume, another I/O error) is transient: the row stays queued
  for the next pass;
* bytes that cannot be stored as this report's SR (not DICOM, unusable UIDs, another SOP
  instance or study) are taken out of the queue and recorded for the admin, with a
  ``handed_over_sr_rejected`` audit event. A draft nobody has signed yet is removed with
  its exports and its job becomes FAILED with the error (the triage page offers to draft
  the study again); a draft already signed keeps its row, and its waiting exports become
  FAILED with the error instead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker, undefer

from node.db.models import AuditEvent, Export, Job, Report, Study
from node.db.types import utcnow
from node.logs import log_event
from node.states import ExportState, JobState, StudyState
from node.storage import InstanceStore, StorageFullError

logger = logging.getLogger(__name__)

#: Reports stored by one call at most (the rest wait for the next pass).
BATCH_SIZE = 50
#: Actor of the audit events written here.
HANDOVER_ACTOR = "system"
#: Error messages kept on job and export rows are cut to this many characters.
MAX_ERROR_LENGTH = 2000


class UnusableSR(ValueError):
    """Handed-over bytes that can never be stored as their report's SR."""


@dataclass(frozen=True)
class _Checked:
    """Where a handed-over SR goes, once its bytes are known to belong to its report."""

    relative_path: str


def store_handed_over_srs(sessions: sessionmaker[Session], store: InstanceStore) -> int:
    """Write every handed-over draft SR to storage; return how many were stored.

    Each report is handled in its own transaction. An SR that cannot be stored as its
    report's SR (unreadable, or another SOP instance or study) leaves the queue and is
    recorded for the admin (see the module notes); one that fails for lack of space or
    another I/O error, or whose transaction fails, stays queued for the next call, and a
    full volume ends this call.

    Parameters
    ----------
    sessions
        Database sessions.
    store
        The node's instance storage.

    Returns
    -------
    int
        How many SRs were written and their rows updated.
    """
    stored = 0
    for report_id in _queued_report_ids(sessions):
        try:
            if _store_one(sessions, store, report_id):
                stored += 1
        except StorageFullError:
            log_event(logger, logging.WARNING, "handed_over_sr_deferred", report_id=report_id,
                      error="StorageFullError")
            break  # every other SR would fail the same way; the next pass tries again
        except OSError as exc:
            log_event(logger, logging.WARNING, "handed_over_sr_deferred", report_id=report_id,
                      error=type(exc).__name__)
        except Exception as exc:  # e.g. a database error on this row: the others go on
            log_event(logger, logging.ERROR, "handed_over_sr_failed", report_id=report_id,
                      error=type(exc).__name__)
    return stored


def _queued_report_ids(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as session:
        return list(session.scalars(
            select(Report.id)
            .where(Report.pending_sr_data.is_not(None), Report.sr_path.is_(None))
            .order_by(Report.id)
            .limit(BATCH_SIZE)
        ))


def _store_one(sessions: sessionmaker[Session], store: InstanceStore, report_id: int) -> bool:
    """Store one report's handed-over SR in a transaction of its own.

    Returns
    -------
    bool
        ``True`` when the SR was stored; ``False`` when the row was taken by another
        pass, is no longer queued, or was rejected as unusable.

    Raises
    ------
    OSError
        When the file cannot be written (:class:`~node.storage.StorageFullError` on a
        full volume); nothing is changed and the row stays queued.
    """
    with sessions.begin() as session:
        row = session.execute(
            select(Report, Study.study_instance_uid)
            .join(Study, Study.id == Report.study_id)
            .where(Report.id == report_id, Report.pending_sr_data.is_not(None),
                   Report.sr_path.is_(None))
            .options(undefer(Report.pending_sr_data))
            .with_for_update(skip_locked=True, of=Report)
        ).first()
        if row is None:
            return False
        report, study_uid = row
        data = report.pending_sr_data
        assert data is not None
        try:
            checked = _check(store, report, study_uid, data)
        except UnusableSR as exc:
            _reject(session, report, exc, utcnow())
            return False
        store.write(checked.relative_path, data)
        report.sr_path = checked.relative_path
        report.pending_sr_data = None
    log_event(logger, logging.INFO, "handed_over_sr_stored", report_id=report_id,
              study_id=report.study_id)
    return True


def _check(store: InstanceStore, report: Report, study_uid: str, data: bytes) -> _Checked:
    """Check that ``data`` is the report's SR and return where it is stored.

    Raises
    ------
    UnusableSR
        If the bytes are not readable DICOM with usable UIDs, or name another SOP
        instance or study than the report row.
    """
    try:
        header = dcmread(DicomBytesIO(data), stop_before_pixels=True)
        sop_uid = str(header.SOPInstanceUID)
        series_uid = str(header.SeriesInstanceUID)
        header_study_uid = str(header.StudyInstanceUID)
    except Exception as exc:  # corrupt bytes fail in many ways (InvalidDicomError, EOF…)
        raise UnusableSR(f"the SR cannot be read: {type(exc).__name__}: {exc}") from exc
    if sop_uid != report.sop_instance_uid or header_study_uid != study_uid:
        raise UnusableSR("the SR's SOP Instance UID or study differ from its report")
    try:
        relative = store.relative_path(study_uid, series_uid, sop_uid,
                                       hashlib.sha256(data).hexdigest())
    except ValueError as exc:
        raise UnusableSR(f"the SR cannot be stored: {exc}") from exc
    return _Checked(relative)


def _reject(session: Session, report: Report, error: UnusableSR, now: dt.datetime) -> None:
    """Take an unusable handed-over SR out of the queue, visibly (see the module notes)."""
    message = str(error)[:MAX_ERROR_LENGTH]
    signed = session.scalar(select(Report.id).where(Report.predecessor_id == report.id))
    details = {"report_id": report.id, "job_id": report.job_id,
               "sop_instance_uid": report.sop_instance_uid, "error": message,
               "draft_removed": signed is None}
    session.add(AuditEvent(
        at=now, actor=HANDOVER_ACTOR, action="handed_over_sr_rejected",
        object_type="report", object_id=str(report.id), study_id=report.study_id,
        details=details,
    ))
    if signed is None:
        _fail_drafting(session, report, message, now)
        session.delete(report)  # its exports go with it (ON DELETE CASCADE)
    else:
        report.pending_sr_data = None
        _fail_exports(session, report, message, now)
    session.flush()
    log_event(logger, logging.ERROR, "handed_over_sr_rejected", report_id=report.id,
              study_id=report.study_id, job_id=report.job_id, draft_removed=signed is None)


def _fail_drafting(session: Session, report: Report, message: str, now: dt.datetime) -> None:
    """Record the draft's job as FAILED with the error, and its study as failed."""
    job = session.get(Job, report.job_id, with_for_update=True) if report.job_id else None
    study = session.get(Study, report.study_id, with_for_update=True)
    if job is not None:
        job.state = JobState.FAILED
        job.finished_at = now
        job.lease_expires_at = None
        job.acknowledged_at = job.acknowledged_by_id = None
        job.error_class = UnusableSR.__name__
        job.error_message = message
        job.error_traceback = None
        session.add(AuditEvent(
            at=now, actor=HANDOVER_ACTOR, action="job_failed", object_type="job",
            object_id=str(job.id), study_id=job.study_id,
            details={"error": UnusableSR.__name__, "report_id": report.id},
        ))
    if study is not None and study.state == StudyState.DRAFTED:
        study.state = StudyState.FAILED
        study.state_reason = f"drafting failed: {UnusableSR.__name__}"


def _fail_exports(session: Session, report: Report, message: str, now: dt.datetime) -> None:
    """Mark the report's waiting exports FAILED: there is no SR to send."""
    for export in session.scalars(
            select(Export).where(Export.report_id == report.id,
                                 Export.state.in_([ExportState.PENDING, ExportState.RETRYING]))
            .with_for_update()):
        export.state = ExportState.FAILED
        export.next_attempt_at = None
        export.last_error = message
        session.add(AuditEvent(
            at=now, actor=HANDOVER_ACTOR, action="export_failed", object_type="export",
            object_id=str(export.id), study_id=report.study_id,
            details={"destination_ae": export.destination_ae, "report_id": report.id,
                     "attempts": export.attempts, "last_error": message},
        ))


__all__ = ["BATCH_SIZE", "UnusableSR", "store_handed_over_srs"]
