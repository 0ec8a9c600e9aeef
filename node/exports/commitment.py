"""What storage commitment reports do to exports (PS3.4 Annex J; the DICOM side is
:mod:`node.dicom.commitment`).

An export to a destination with ``storage_commitment = true`` is COMMITMENT_PENDING from
its commitment request on; the request's Transaction UID and the instances it named are
on the row, written *before* the N-ACTION goes out, so a report is recognised whenever it
comes: on the request's association, on one the destination opens later, after a
restart of the node. Then

* a report committing every instance named makes the export COMMITTED (delivered);
* a report with failures, or no report within ``commitment_timeout_seconds``
  (:meth:`CommitmentLedger.expire`), makes it RETRYING: the object is sent and committed
  again after the back-off, under a new Transaction UID, until
  ``commitment_max_attempts`` or ``max_age_seconds`` make it FAILED (triage);
* a report from an AE that is not a commitment destination, or naming a Transaction UID
  no export holds (or another destination's), changes nothing: it is refused with a
  DIMSE status and audited as ``commitment_report_refused``.

A report naming the current Transaction UID of an export that already timed out still
counts when it commits everything (the destination did keep the object).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from node.config import Destination, ExportSettings
from node.db.models import AuditEvent, Export, Report
from node.db.types import utcnow
from node.dicom.commitment import CommitmentReference, CommitmentReport, ReportStatus
from node.dicom.refusals import COMMITMENT_REPORT_REFUSED
from node.exports.health import note_destination_outcome
from node.exports.retry import schedule_retry
from node.logs import log_event
from node.states import ExportState

logger = logging.getLogger(__name__)

#: States in which a report of the export's current transaction is still listened to.
_REPORTABLE_STATES = (ExportState.COMMITMENT_PENDING, ExportState.RETRYING,
                      ExportState.FAILED)


def requested_references(export: Export) -> list[CommitmentReference]:
    """The instances the export's latest commitment request named."""
    return [CommitmentReference(str(sop_class), str(sop_instance))
            for sop_class, sop_instance in export.commitment_references or []]


class CommitmentLedger:
    """Records storage commitment reports and timeouts on the export rows.

    Parameters
    ----------
    settings
        Commitment timeout, attempts and back-off.
    destinations
        The configured destinations by AE title; reports are taken only from those with
        ``storage_commitment`` set.
    sessions
        Database sessions.
    clock
        The current time (tests step it).
    """

    def __init__(self, settings: ExportSettings, destinations: Mapping[str, Destination],
                 sessions: sessionmaker[Session],
                 clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.settings = settings
        self.destinations = dict(destinations)
        self.sessions = sessions
        self.clock = clock

    # -- reports --------------------------------------------------------------------------

    def record_report(self, report: CommitmentReport, now: dt.datetime | None = None) -> int:
        """Apply one N-EVENT-REPORT; return the status to answer it with.

        Success when the report was recorded, or when it repeats one already recorded;
        0x0124 from an AE that is not a commitment destination, 0x0115 for a Transaction
        UID that no export of that destination holds. Refusals change no export and are
        audited. ``now`` is the time recorded (the clock's by default).
        """
        now = now or self.clock()
        destination = self.destinations.get(report.calling_ae)
        with self.sessions.begin() as session:
            if destination is None or not destination.storage_commitment:
                self._refuse(session, now, report, None, "not a storage commitment destination")
                status = ReportStatus.NOT_AUTHORIZED
            else:
                export = session.scalars(
                    select(Export).where(
                        Export.commitment_transaction_uid == report.transaction_uid)
                    .with_for_update()
                ).one_or_none()
                if export is None or export.destination_ae != report.calling_ae:
                    reason = ("unknown Transaction UID" if export is None
                              else "Transaction UID of another destination's request")
                    self._refuse(session, now, report, export, reason)
                    status = ReportStatus.INVALID_ARGUMENT_VALUE
                else:
                    self._apply(session, now, report, export)
                    status = ReportStatus.SUCCESS
        return int(status)

    def _apply(self, session: Session, now: dt.datetime, report: CommitmentReport,
               export: Export) -> None:
        if export.state not in _REPORTABLE_STATES:
            log_event(logger, logging.INFO, "commitment_report_repeated", export_id=export.id,
                      destination_ae=export.destination_ae, state=export.state.name)
            return
        verdict = report.verdict(requested_references(export))
        late = export.state != ExportState.COMMITMENT_PENDING
        if verdict is None:
            export.state = ExportState.COMMITTED
            export.committed_at = now
            export.next_attempt_at = None
            export.last_error = None
            note_destination_outcome(session, export.destination_ae, now)
            self._audit(session, now, export, "export_committed", {
                "transaction_uid": report.transaction_uid,
                "instances": len(export.commitment_references or []), "late": late})
            log_event(logger, logging.INFO, "export_committed", export_id=export.id,
                      destination_ae=export.destination_ae, attempts=export.attempts,
                      late=late)
            return
        if late:  # already being sent again: a late refusal changes nothing
            log_event(logger, logging.INFO, "commitment_refusal_late", export_id=export.id,
                      destination_ae=export.destination_ae, state=export.state.name)
            return
        self._retry(session, now, export, verdict, "commitment_refused",
                    {"transaction_uid": report.transaction_uid,
                     "failed": len(report.failed)})

    def _refuse(self, session: Session, now: dt.datetime, report: CommitmentReport,
                export: Export | None, reason: str) -> None:
        session.add(AuditEvent(
            at=now, actor=f"ae:{report.calling_ae}", action=COMMITMENT_REPORT_REFUSED,
            object_type="export", object_id=str(export.id) if export is not None else None,
            details={"reason": reason, "transaction_uid": report.transaction_uid,
                     "event_type": int(report.event), "calling_ae": report.calling_ae},
        ))
        log_event(logger, logging.WARNING, "commitment_report_refused",
                  calling_ae=report.calling_ae, transaction_uid=report.transaction_uid,
                  reason=reason)

    # -- timeouts -------------------------------------------------------------------------

    def expire(self, now: dt.datetime | None = None) -> list[int]:
        """Retry (or fail) the exports whose commitment report is overdue at ``now``.

        Returns
        -------
        list of int
            The ids of the exports that timed out.
        """
        now = now or self.clock()
        expired: list[int] = []
        with self.sessions.begin() as session:
            rows = session.scalars(
                select(Export).where(Export.state == ExportState.COMMITMENT_PENDING,
                                     Export.next_attempt_at <= now)
                .order_by(Export.next_attempt_at, Export.id)
                .with_for_update(skip_locked=True)
            ).all()
            for export in rows:
                waited = self.settings.commitment_timeout_seconds
                message = (f"{export.destination_ae} sent no storage commitment report "
                           f"within {waited:g} s (transaction "
                           f"{export.commitment_transaction_uid})")
                self._retry(session, now, export, message, "commitment_timed_out",
                            {"transaction_uid": export.commitment_transaction_uid})
                expired.append(export.id)
        return expired

    # -- shared ---------------------------------------------------------------------------

    def _retry(self, session: Session, now: dt.datetime, export: Export, message: str,
               action: str, details: dict[str, Any]) -> None:
        state = schedule_retry(export, now, self.settings, message, commitment=True)
        note_destination_outcome(session, export.destination_ae, now, message)
        self._audit(session, now, export, action, {
            **details, "attempts": export.attempts, "state": state.name, "reason": message})
        if state == ExportState.FAILED:
            self._audit(session, now, export, "export_failed", {
                "destination_ae": export.destination_ae, "attempts": export.attempts,
                "last_error": message})
        log_event(logger, logging.ERROR if state == ExportState.FAILED else logging.WARNING,
                  action, export_id=export.id, destination_ae=export.destination_ae,
                  attempts=export.attempts, state=state.name)

    @staticmethod
    def _audit(session: Session, now: dt.datetime, export: Export, action: str,
               details: dict[str, Any]) -> None:
        study_id = session.scalar(select(Report.study_id).where(Report.id == export.report_id))
        session.add(AuditEvent(
            at=now, actor="system", action=action, object_type="export",
            object_id=str(export.id), study_id=study_id,
            details={"destination_ae": export.destination_ae, "report_id": export.report_id,
                     **details},
        ))


__all__ = ["CommitmentLedger", "requested_references"]
