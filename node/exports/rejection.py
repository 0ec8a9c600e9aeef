"""Withdrawing a draft from the destinations: IHE IOCM rejection notes as exports.

When a radiologist rejects a draft, or signs the report that supersedes it,
:func:`withdraw_draft` runs in the same transaction:

* the draft's exports not delivered (PENDING, RETRYING, FAILED) become WITHDRAWN: the
  draft is not sent any more, nor offered for a retry in triage;
* each destination that holds the draft, or may (SENT, COMMITMENT_PENDING, COMMITTED, or
  any export whose C-STORE once succeeded: a commitment refused is no proof that the
  archive dropped the object), gets a REJECTION_NOTE export of the draft: a Key Object
  Selection Document rejecting it
  (:mod:`node.reports.rejection_note`), written once per draft into the store and
  delivered, retried and shown in triage like any export (with storage commitment where
  the destination asks for it).

A send that was in flight when its export was withdrawn and then succeeds did deliver
the draft: the export service records it as SENT and calls :func:`queue_rejection_notes`
for that destination.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Sequence

from pydicom import dcmread
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node.db.models import AuditEvent, Export, Report, Study
from node.exports.rows import insert_missing_exports
from node.logs import log_event
from node.reports.rejection_note import RejectionCause, build_rejection_note
from node.reports.sr_builder import sr_to_bytes
from node.states import ExportKind, ExportState
from node.storage import InstanceStore

logger = logging.getLogger(__name__)

#: Export states in which the destination holds the draft.
HOLDING_STATES = (ExportState.SENT, ExportState.COMMITMENT_PENDING, ExportState.COMMITTED)


def rejection_cause(session: Session, draft: Report) -> RejectionCause:
    """SUPERSEDED when a signed report names ``draft`` as its predecessor, else REJECTED."""
    successor = session.scalar(select(Report.id).where(Report.predecessor_id == draft.id))
    return RejectionCause.SUPERSEDED if successor is not None else RejectionCause.REJECTED


def withdraw_draft(session: Session, store: InstanceStore | None, draft: Report,
                   cause: RejectionCause, *, now: dt.datetime) -> list[Export]:
    """Stop delivering ``draft``; queue a rejection note for each destination holding it.

    Runs in the caller's transaction (the draft's exports are locked); calling it again
    adds nothing. ``store`` holds the draft SR and receives the note; it may be ``None``
    only when no destination holds the draft.

    Returns
    -------
    list of Export
        The rejection note exports of the draft (new or existing).
    """
    exports = session.scalars(
        select(Export).where(Export.report_id == draft.id, Export.kind == ExportKind.REPORT)
        .order_by(Export.id).with_for_update()
    ).all()
    holding: list[str] = []
    for export in exports:
        if export.state in HOLDING_STATES or export.sent_at is not None:
            holding.append(export.destination_ae)
        if export.state in (ExportState.PENDING, ExportState.RETRYING, ExportState.FAILED):
            export.state = ExportState.WITHDRAWN
            export.next_attempt_at = None
            session.add(AuditEvent(
                at=now, actor="system", action="export_withdrawn", object_type="export",
                object_id=str(export.id), study_id=draft.study_id,
                details={"destination_ae": export.destination_ae, "report_id": draft.id,
                         "cause": cause.name, "attempts": export.attempts}))
            log_event(logger, logging.INFO, "export_withdrawn", export_id=export.id,
                      report_id=draft.id, destination_ae=export.destination_ae)
    return queue_rejection_notes(session, store, draft, holding, cause, now=now)


def queue_rejection_notes(session: Session, store: InstanceStore | None, draft: Report,
                          destination_titles: Sequence[str], cause: RejectionCause, *,
                          now: dt.datetime) -> list[Export]:
    """Queue the rejection note of ``draft`` for each of ``destination_titles``.

    The note is built and stored on first use and shared by every destination; rows are
    unique per draft and destination (existing ones are left as they are).

    Returns
    -------
    list of Export
        The rejection note exports for those destinations.

    Raises
    ------
    ValueError
        When the note must be written and there is no ``store``, or the draft has no
        stored SR.
    """
    titles = list(dict.fromkeys(destination_titles))
    if not titles:
        return []
    existing = session.scalars(
        select(Export).where(Export.report_id == draft.id,
                             Export.kind == ExportKind.REJECTION_NOTE)
        .order_by(Export.id).limit(1)).first()
    if existing is not None and existing.object_path is not None:
        path, sop_uid = existing.object_path, existing.object_sop_instance_uid
    else:
        path, sop_uid = _store_note(session, store, draft, cause)
    rows: list[dict[str, object]] = [
        {"report_id": draft.id, "destination_ae": title, "kind": ExportKind.REJECTION_NOTE,
         "object_path": path, "object_sop_instance_uid": sop_uid,
         "state": ExportState.PENDING, "attempts": 0, "next_attempt_at": now,
         "created_at": now}
        for title in titles]
    new_ids = insert_missing_exports(session, rows)
    notes = session.scalars(
        select(Export).where(Export.report_id == draft.id,
                             Export.kind == ExportKind.REJECTION_NOTE,
                             Export.destination_ae.in_(titles))
        .order_by(Export.id).execution_options(populate_existing=True)).all()
    for note in notes:
        if note.id in new_ids:
            session.add(AuditEvent(
                at=now, actor="system", action="rejection_note_queued",
                object_type="export", object_id=str(note.id), study_id=draft.study_id,
                details={"destination_ae": note.destination_ae, "report_id": draft.id,
                         "cause": cause.name, "sop_instance_uid": sop_uid,
                         "rejected_sop_instance_uid": draft.sop_instance_uid}))
            log_event(logger, logging.INFO, "rejection_note_queued", export_id=note.id,
                      report_id=draft.id, destination_ae=note.destination_ae)
    session.flush()
    return list(notes)


def _store_note(session: Session, store: InstanceStore | None, draft: Report,
                cause: RejectionCause) -> tuple[str, str]:
    """Build the draft's rejection note and write it to the store; return (path, UID)."""
    if store is None:
        raise ValueError("a destination holds the draft and no store was given for its "
                         "rejection note")
    if draft.sr_path is None:
        raise ValueError(f"report {draft.id} has no stored SR to reject")
    study = session.get_one(Study, draft.study_id)
    earlier = session.scalar(
        select(func.count(func.distinct(Export.object_sop_instance_uid)))
        .join(Report, Report.id == Export.report_id)
        .where(Report.study_id == study.id, Export.kind == ExportKind.REJECTION_NOTE)) or 0
    draft_sr = dcmread(store.absolute(draft.sr_path))
    note = build_rejection_note(draft_sr, cause, instance_number=earlier + 1)
    data = sr_to_bytes(note)
    relative = store.relative_path(study.study_instance_uid, str(note.SeriesInstanceUID),
                                   str(note.SOPInstanceUID), hashlib.sha256(data).hexdigest())
    store.write(relative, data)
    return relative, str(note.SOPInstanceUID)


__all__ = ["HOLDING_STATES", "queue_rejection_notes", "rejection_cause", "withdraw_draft"]
