"""The export lifecycle: one row per report, destination and kind, delivered exactly once.

``queue_exports`` writes PENDING rows of the report's SR in the caller's transaction
(idempotent: the (report, destination, kind) triple is unique); rejection notes of
withdrawn drafts are queued by :mod:`node.exports.rejection` and delivered alike.
:class:`ExportService` delivers due rows in passes:

0. **store** — write the draft SRs that workers without the storage folder handed over
   in their report rows (:mod:`node.reports.handover`); a failure there is logged and
   the pass goes on;
1. **claim** — in a short transaction, lock due PENDING/RETRYING rows (``FOR
   UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` serialises
   writers), count the attempt and push ``next_attempt_at`` past a claim lease,
   so no other pass or process picks the row while it is being sent (the lease
   is renewed when the export's turn comes, after others to the same destination);
2. **send** — outside any transaction, one association per export: the study's
   instances first when ``include_images`` is set, then the report's SR;
3. **record** — SENT with ``sent_at``, or RETRYING with an exponential back-off,
   or FAILED once the export is older than ``max_age_seconds`` (the dead letter
   an admin sees, with ``last_error``). A SENT row is never selected again;
4. **commit** — for a destination with ``storage_commitment``, the C-STORE is not the
   end: the row becomes COMMITMENT_PENDING with a new Transaction UID (recorded first),
   then a storage commitment request goes out on its own association, which stays open
   ``commitment_wait_seconds`` for the report. The report, on that association or a
   later one, makes the row COMMITTED, or RETRYING when it names failures
   (:mod:`node.exports.commitment`); each pass starts by retrying the rows whose report
   is overdue.

A sender that dies between claim and record leaves the row to be claimed again
when its lease runs out; the destination then receives the same SOP instance
again, which a Storage SCP keeps as one copy. Logs carry ids and AE titles only.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydicom.uid import generate_uid
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from node.config import Destination, ExportSettings, Settings
from node.db.models import AuditEvent, Export, Instance, Report
from node.db.types import utcnow
from node.dicom.commitment import CommitmentReference, ReportSink, request_commitment
from node.dicom.export import (
    DestinationRefused,
    DestinationUnreachable,
    InstanceSender,
    SendResult,
    build_client_ssl_context,
    send_instances,
)
from node.exports.commitment import CommitmentLedger
from node.exports.health import note_destination_outcome
from node.exports.rejection import queue_rejection_notes, rejection_cause
from node.exports.retry import backoff_delay, schedule_retry
from node.exports.rows import insert_missing_exports
from node.logs import log_event
from node.periodic import PeriodicThread
from node.reports.handover import store_handed_over_srs
from node.states import ExportKind, ExportState, ReportState
from node.storage import InstanceStore

logger = logging.getLogger(__name__)

#: States in which an export waits for (another) attempt.
WAITING_STATES = (ExportState.PENDING, ExportState.RETRYING)

#: ``last_error`` is cut to this many characters.
MAX_ERROR_LENGTH = 2000


class CommitmentRequester(Protocol):
    """The signature of :func:`~node.dicom.commitment.request_commitment`."""

    def __call__(
        self,
        destination: Destination,
        transaction_uid: str,
        references: Sequence[CommitmentReference],
        *,
        calling_ae: str,
        timeout: float,
        wait_seconds: float,
        on_report: ReportSink,
        ssl_context: ssl.SSLContext | None = None,
    ) -> bool: ...


def queue_exports(
    session: Session,
    report: Report,
    destinations: Iterable[Destination],
    *,
    now: dt.datetime | None = None,
) -> list[Export]:
    """Create (or find) one PENDING export of ``report`` per automatic destination.

    Runs in the caller's transaction and does not commit; wake the
    :class:`ExportService` after the commit for an immediate delivery. Calling
    it again, or concurrently, adds nothing: rows are unique per report and
    destination AE title, and existing rows (SENT or not) are left as they are.
    Destinations with ``auto_export = false`` (C-MOVE targets only) are skipped, and
    a draft goes only to those with ``exports = "drafts_and_finals"``.

    Parameters
    ----------
    session
        The caller's session (flushed, not committed).
    report
        The report whose SR is to be delivered.
    destinations
        The configured destinations; those with ``auto_export`` set receive it.
    now
        The queueing time (also the start of the export's maximum age).

    Returns
    -------
    list of Export
        One row per distinct destination AE title, in the order given.
    """
    now = now or utcnow()
    is_draft = report.state == ReportState.DRAFT
    titles = list(dict.fromkeys(
        d.ae_title for d in destinations
        if d.auto_export and (d.receives_drafts() or not is_draft)))
    if not titles:
        return []
    if report.id is None:
        session.flush()
    rows = [
        {"report_id": report.id, "destination_ae": title, "kind": ExportKind.REPORT,
         "state": ExportState.PENDING, "attempts": 0, "next_attempt_at": now,
         "created_at": now}
        for title in titles
    ]
    new_ids = insert_missing_exports(session, rows)
    exports = session.scalars(
        select(Export)
        .where(Export.report_id == report.id, Export.destination_ae.in_(titles),
               Export.kind == ExportKind.REPORT)
        .execution_options(populate_existing=True)
    ).all()
    by_title = {export.destination_ae: export for export in exports}
    for export in exports:
        if export.id in new_ids:
            session.add(AuditEvent(
                at=now, actor="system", action="export_queued", object_type="export",
                object_id=str(export.id), study_id=report.study_id,
                details={"destination_ae": export.destination_ae, "report_id": report.id},
            ))
            log_event(logger, logging.INFO, "export_queued", export_id=export.id,
                      report_id=report.id, destination_ae=export.destination_ae)
    session.flush()
    return [by_title[title] for title in titles]


@dataclass(frozen=True)
class _Claim:
    """What one attempt needs, read while the row was locked."""

    export_id: int
    attempts: int
    previous_next_attempt_at: dt.datetime | None
    destination_ae: str
    report_id: int
    study_id: int
    sr_path: str | None
    report_sop_instance_uid: str | None
    created_at: dt.datetime
    image_paths: tuple[str, ...]


def _export_event(action: str, export: Export, claim: _Claim, now: dt.datetime,
                  **details: Any) -> AuditEvent:
    """An audit event on ``export``, with the destination, report and attempt it concerns."""
    return AuditEvent(
        at=now, actor="system", action=action, object_type="export",
        object_id=str(export.id), study_id=claim.study_id,
        details={"destination_ae": claim.destination_ae, "report_id": claim.report_id,
                 "attempts": export.attempts, **details},
    )


class ExportService:
    """Deliver due exports, periodically in a thread or one pass at a time.

    Parameters
    ----------
    settings
        Back-off, maximum age, timeouts and pass size.
    destinations
        The configured peers, looked up by AE title (titles must be unique).
    sessions
        Database sessions.
    store
        Resolves the report SR and instance paths (relative to its root).
    calling_ae
        The node's AE title towards the destinations.
    ssl_context
        Client TLS context for destinations with ``tls = true``.
    sender
        Sends a list of instances over one association (default
        :func:`~node.dicom.export.send_instances`).
    committer
        Asks a destination for storage commitment (default
        :func:`~node.dicom.commitment.request_commitment`).
    """

    def __init__(
        self,
        settings: ExportSettings,
        destinations: Sequence[Destination],
        sessions: sessionmaker[Session],
        store: InstanceStore,
        *,
        calling_ae: str,
        ssl_context: ssl.SSLContext | None = None,
        sender: InstanceSender = send_instances,
        committer: CommitmentRequester = request_commitment,
    ) -> None:
        titles = [d.ae_title for d in destinations]
        duplicates = sorted({t for t in titles if titles.count(t) > 1})
        if duplicates:
            raise ValueError(f"destination AE titles must be unique: {duplicates}")
        self.settings = settings
        self.destinations = {d.ae_title: d for d in destinations}
        self.sessions = sessions
        self.store = store
        self.calling_ae = calling_ae
        self.ssl_context = ssl_context
        self.sender = sender
        self.committer = committer
        self.ledger = CommitmentLedger(settings, self.destinations, sessions)
        """Records storage commitment reports (also those the listener receives)."""
        self._periodic = PeriodicThread("exporter", settings.period_seconds, self._deliver_now)

    @classmethod
    def from_settings(
        cls, settings: Settings, sessions: sessionmaker[Session], store: InstanceStore
    ) -> ExportService:
        """Build the service from the node's settings.

        The calling AE is ``exports.calling_ae`` or else ``dicom.ae_title``; a
        TLS client context is built from ``[dicom.tls]`` when a destination
        uses TLS.
        """
        ssl_context = None
        if any(d.tls for d in settings.destinations):
            ssl_context = build_client_ssl_context(settings.dicom.tls)
        return cls(
            settings.exports,
            settings.destinations,
            sessions,
            store,
            calling_ae=settings.exports.calling_ae or settings.dicom.ae_title,
            ssl_context=ssl_context,
        )

    # -- one pass -------------------------------------------------------------------------

    def deliver_due(self, now: dt.datetime | None = None) -> list[int]:
        """Claim the exports due at ``now``, send them and record the outcomes.

        Parameters
        ----------
        now
            The time to act at (tests pass it to step through back-off delays);
            the wall clock when omitted.

        Returns
        -------
        list of int
            Ids of the exports claimed by this pass, whatever their outcome
            (read each row's ``state``). Two passes, in one process or two,
            never claim the same row at once.
        """
        clock: Callable[[], dt.datetime] = (lambda: now) if now is not None else utcnow
        self._store_handed_over()
        self._expire_commitments(clock())
        claims = self._claim_due(clock())
        if not claims:
            return []
        groups: dict[str, list[_Claim]] = {}
        for claim in claims:
            groups.setdefault(claim.destination_ae, []).append(claim)
        if len(groups) == 1:
            self._deliver_group(next(iter(groups.values())), clock)
        else:  # one destination down must not hold up the others
            with ThreadPoolExecutor(max_workers=min(len(groups), 8),
                                    thread_name_prefix="export") as pool:
                for future in [pool.submit(self._deliver_group, g, clock)
                               for g in groups.values()]:
                    future.result()
        return [claim.export_id for claim in claims]

    def _store_handed_over(self) -> None:
        """Store the handed-over draft SRs; a failure there is logged, never fatal to the pass."""
        try:
            store_handed_over_srs(self.sessions, self.store)
        except Exception as exc:  # the exports already due must still go out
            log_event(logger, logging.ERROR, "handed_over_srs_failed",
                      error=type(exc).__name__)

    def _expire_commitments(self, now: dt.datetime) -> None:
        """Retry the exports whose commitment report is overdue; never fatal to the pass."""
        try:
            self.ledger.expire(now)
        except Exception as exc:  # the exports already due must still go out
            log_event(logger, logging.ERROR, "commitment_expiry_failed",
                      error=type(exc).__name__)

    def _claim_due(self, now: dt.datetime) -> list[_Claim]:
        lease_until = now + dt.timedelta(seconds=self.settings.claim_seconds)
        claims: list[_Claim] = []
        with self.sessions.begin() as session:
            rows = session.execute(
                select(Export, Report)
                .join(Report, Report.id == Export.report_id)
                .where(
                    Export.state.in_(WAITING_STATES),
                    or_(Export.next_attempt_at.is_(None), Export.next_attempt_at <= now),
                )
                .order_by(Export.next_attempt_at, Export.id)
                .limit(self.settings.batch_size)
                .with_for_update(skip_locked=True, of=Export)
            ).all()
            for export, report in rows:
                note = export.kind == ExportKind.REJECTION_NOTE
                claims.append(_Claim(
                    export_id=export.id,
                    attempts=export.attempts + 1,
                    previous_next_attempt_at=export.next_attempt_at,
                    destination_ae=export.destination_ae,
                    report_id=report.id,
                    study_id=report.study_id,
                    sr_path=export.object_path if note else report.sr_path,
                    report_sop_instance_uid=(export.object_sop_instance_uid if note
                                             else report.sop_instance_uid),
                    created_at=export.created_at,
                    image_paths=() if note else self._image_paths(session, report),
                ))
                export.attempts += 1
                export.next_attempt_at = lease_until
        return claims

    def _image_paths(self, session: Session, report: Report) -> tuple[str, ...]:
        if not self.settings.include_images:
            return ()
        query = (
            select(Instance.path)
            .where(Instance.study_id == report.study_id, Instance.purged_at.is_(None))
            .order_by(Instance.series_number, Instance.instance_number, Instance.id)
        )
        if report.sop_instance_uid is not None:
            query = query.where(Instance.sop_instance_uid != report.sop_instance_uid)
        return tuple(session.scalars(query))

    def _deliver_group(self, claims: list[_Claim], clock: Callable[[], dt.datetime]) -> None:
        """Deliver one destination's claims in order; stop early when it is unreachable."""
        for index, claim in enumerate(claims):
            if self._periodic.stopping:  # stopping mid-pass
                for left in claims[index:]:
                    self._release(left)
                return
            try:
                if not self._renew(claim, clock()):
                    continue  # taken over by another pass while this one waited
                unreachable = self._deliver(claim, clock)
            except Exception:  # a database failure: the lease brings the row back
                logger.exception("export_record_failed", extra={"export_id": claim.export_id})
                continue
            if unreachable is not None:
                for left in claims[index + 1:]:
                    self._record_failure(left, clock(), f"not attempted: {unreachable}",
                                         unreachable)
                return

    def _deliver(
        self, claim: _Claim, clock: Callable[[], dt.datetime]
    ) -> DestinationUnreachable | None:
        """Attempt one export; return the error when the destination is unreachable."""
        destination = self.destinations.get(claim.destination_ae)
        if destination is None:
            self._record_failure(
                claim, clock(), f"destination {claim.destination_ae} is not configured", None
            )
            return None
        if claim.sr_path is None:
            self._record_failure(claim, clock(), "the report has no SR file yet", None)
            return None
        paths: list[Path] = [self.store.absolute(p) for p in claim.image_paths]
        paths.append(self.store.absolute(claim.sr_path))
        try:
            results = self.sender(
                destination, paths, calling_ae=self.calling_ae,
                timeout=self.settings.timeout_seconds, ssl_context=self.ssl_context,
            )
        except DestinationUnreachable as exc:
            self._record_failure(claim, clock(), str(exc), exc)
            return exc
        except DestinationRefused as exc:
            self._record_failure(claim, clock(), str(exc), exc)
            return None
        except Exception as exc:  # unreadable file, bad dataset: recorded, retried, visible
            self._record_failure(claim, clock(), f"{type(exc).__name__}: {exc}", exc)
            return None
        if destination.storage_commitment:
            return self._request_commitment(claim, destination, results, clock)
        self._record_success(claim, clock(), results)
        return None

    # -- storage commitment ---------------------------------------------------------------

    def _request_commitment(
        self, claim: _Claim, destination: Destination, results: Sequence[SendResult],
        clock: Callable[[], dt.datetime],
    ) -> DestinationUnreachable | None:
        """Record the stored instances and the new transaction, then ask for commitment."""
        transaction_uid = str(generate_uid())
        references = [CommitmentReference(r.sop_class_uid, r.sop_instance_uid)
                      for r in results]
        if not self._record_stored(claim, clock(), results, transaction_uid):
            return None
        try:
            self.committer(
                destination, transaction_uid, references, calling_ae=self.calling_ae,
                timeout=self.settings.timeout_seconds,
                wait_seconds=self.settings.commitment_wait_seconds,
                on_report=lambda report: self.ledger.record_report(report, now=clock()),
                ssl_context=self.ssl_context,
            )
        except DestinationUnreachable as exc:
            self._record_commitment_failure(claim, transaction_uid, clock(), str(exc), exc)
            return exc
        except Exception as exc:  # refused, or a local failure: recorded, retried, visible
            message = str(exc) if isinstance(exc, DestinationRefused) else (
                f"{type(exc).__name__}: {exc}")
            self._record_commitment_failure(claim, transaction_uid, clock(), message, exc)
        return None

    def _record_stored(self, claim: _Claim, now: dt.datetime, results: Sequence[SendResult],
                       transaction_uid: str) -> bool:
        """COMMITMENT_PENDING with the transaction; ``False`` if the row is no longer ours."""
        with self.sessions.begin() as session:
            export = session.get(Export, claim.export_id, with_for_update=True)
            if export is not None and export.state == ExportState.WITHDRAWN and \
                    export.attempts == claim.attempts:
                # withdrawn while it was being sent: it arrived, and a note rejects it
                self._withdrawn_but_delivered(session, export, claim, now)
                export.state, export.sent_at = ExportState.SENT, now
                session.add(_export_event("export_sent", export, claim, now,
                                          instances=len(results), withdrawn=True))
                return False
            if (export is None or export.state not in WAITING_STATES
                    or export.attempts != claim.attempts):
                return False
            export.state = ExportState.COMMITMENT_PENDING
            export.sent_at = now
            export.commitment_transaction_uid = transaction_uid
            export.commitment_references = [[r.sop_class_uid, r.sop_instance_uid]
                                            for r in results]
            export.commitment_requested_at = now
            export.next_attempt_at = now + dt.timedelta(
                seconds=self.settings.commitment_timeout_seconds)
            session.add(_export_event(
                "export_sent", export, claim, now, instances=len(results),
                sop_instance_uid=claim.report_sop_instance_uid,
                commitment_transaction_uid=transaction_uid))
        log_event(logger, logging.INFO, "export_stored_commitment_requested",
                  export_id=claim.export_id, destination_ae=claim.destination_ae,
                  attempts=claim.attempts, instances=len(results),
                  transaction_uid=transaction_uid)
        return True

    def _record_commitment_failure(self, claim: _Claim, transaction_uid: str,
                                   now: dt.datetime, message: str, error: Exception) -> None:
        """The commitment request itself failed: retry the export (send and request)."""
        message = f"storage commitment request: {message}"[:MAX_ERROR_LENGTH]
        with self.sessions.begin() as session:
            export = session.get(Export, claim.export_id, with_for_update=True)
            if (export is None or export.state != ExportState.COMMITMENT_PENDING
                    or export.commitment_transaction_uid != transaction_uid):
                return  # a report already came, or the row moved on
            state = schedule_retry(export, now, self.settings, message)
            note_destination_outcome(session, claim.destination_ae, now, message)
            if state == ExportState.FAILED:
                session.add(_export_event("export_failed", export, claim, now,
                                          last_error=message))
        log_event(logger, logging.WARNING, "commitment_request_failed",
                  export_id=claim.export_id, destination_ae=claim.destination_ae,
                  attempts=claim.attempts, error=type(error).__name__, state=state.name)

    # -- recording outcomes ---------------------------------------------------------------

    def _record_success(
        self, claim: _Claim, now: dt.datetime, results: Sequence[SendResult]
    ) -> None:
        warnings = [f"0x{r.status:04X}" for r in results if r.is_warning]
        with self.sessions.begin() as session:
            export = session.get(Export, claim.export_id, with_for_update=True)
            if export is None or export.state == ExportState.SENT:
                return
            if export.state == ExportState.WITHDRAWN:
                self._withdrawn_but_delivered(session, export, claim, now)
            export.state = ExportState.SENT
            export.sent_at = now
            export.next_attempt_at = None
            export.last_error = None
            note_destination_outcome(session, claim.destination_ae, now)
            session.add(_export_event(
                "export_sent", export, claim, now, instances=len(results),
                sop_instance_uid=claim.report_sop_instance_uid, warnings=warnings))
            attempts = export.attempts
        log_event(logger, logging.INFO, "export_sent", export_id=claim.export_id,
                  report_id=claim.report_id, destination_ae=claim.destination_ae,
                  attempts=attempts, instances=len(results), warnings=len(warnings))

    def _withdrawn_but_delivered(self, session: Session, export: Export, claim: _Claim,
                                 now: dt.datetime) -> None:
        """A draft withdrawn while its send was in flight reached the destination: queue
        the rejection note that withdraws it there too."""
        draft = session.get_one(Report, claim.report_id)
        queue_rejection_notes(session, self.store, draft, [export.destination_ae],
                              rejection_cause(session, draft), now=now)
        log_event(logger, logging.INFO, "withdrawn_export_delivered",
                  export_id=export.id, destination_ae=export.destination_ae)

    def _record_failure(
        self, claim: _Claim, now: dt.datetime, message: str, error: Exception | None
    ) -> None:
        message = message[:MAX_ERROR_LENGTH]
        with self.sessions.begin() as session:
            export = session.get(Export, claim.export_id, with_for_update=True)
            if export is None or export.state not in WAITING_STATES:
                return
            if export.attempts != claim.attempts:
                return  # the lease ran out and a newer claim owns the row
            note_destination_outcome(session, claim.destination_ae, now, message)
            if schedule_retry(export, now, self.settings, message) == ExportState.FAILED:
                session.add(_export_event("export_failed", export, claim, now,
                                          last_error=message))
            state, next_attempt_at = export.state, export.next_attempt_at
        status = getattr(error, "status", None)
        log_event(
            logger,
            logging.ERROR if state == ExportState.FAILED else logging.WARNING,
            "export_failed" if state == ExportState.FAILED else "export_retrying",
            export_id=claim.export_id, report_id=claim.report_id,
            destination_ae=claim.destination_ae, attempts=claim.attempts,
            error=type(error).__name__ if error is not None else "NotSendable",
            status=f"0x{status:04X}" if isinstance(status, int) else None,
            next_attempt_at=next_attempt_at.isoformat() if next_attempt_at else None,
        )

    def _renew(self, claim: _Claim, now: dt.datetime) -> bool:
        """Extend the lease of a claim that waited behind others; ``False`` if no longer ours."""
        with self.sessions.begin() as session:
            export = session.get(Export, claim.export_id, with_for_update=True)
            if (export is None or export.state not in WAITING_STATES
                    or export.attempts != claim.attempts):
                return False
            export.next_attempt_at = now + dt.timedelta(seconds=self.settings.claim_seconds)
            return True

    def _release(self, claim: _Claim) -> None:
        """Give back a claim that was never attempted (the service is stopping)."""
        with self.sessions.begin() as session:
            export = session.get(Export, claim.export_id, with_for_update=True)
            if (export is not None and export.state in WAITING_STATES
                    and export.attempts == claim.attempts):
                export.attempts -= 1
                export.next_attempt_at = claim.previous_next_attempt_at

    # -- the periodic loop ----------------------------------------------------------------

    def notify(self) -> None:
        """Run a pass now rather than at the next period (call after queueing)."""
        self._periodic.wake()

    def _deliver_now(self) -> bool:
        """One pass of the loop; ``True`` when a full batch suggests more are due."""
        return len(self.deliver_due()) >= self.settings.batch_size

    def start(self) -> None:
        """Deliver periodically in a thread, starting with a pass now."""
        self._periodic.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loop; a send in progress finishes (it is bounded by the timeouts)."""
        self._periodic.stop(timeout)


__all__ = ["CommitmentRequester", "ExportService", "backoff_delay",
           "note_destination_outcome", "queue_exports"]
