"""An admin's resolutions of quarantined instances: accept into the study, or discard.

* **accept** — only for a *patient identity conflict* (an instance with a new SOP Instance
  UID whose patient disagrees with its study's): the admin vouches that it belongs to the
  study. Its bytes are written under the study folder as an ordinary instance (the study
  reopens like any late arrival) and the quarantined copy is removed after commit.
  A copy that conflicts with a stored instance (*content* or *study conflict*) cannot be
  accepted: an acknowledged instance is never replaced or moved, so the only resolution
  is discard (the sender must issue a new SOP Instance UID for new content).
* **discard** — the quarantined file is deleted after commit; the row stays, DISCARDED,
  for the audit trail.

Both are audited with the admin's id (``quarantine_accepted`` / ``quarantine_discarded``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import AuditEvent, Instance, QuarantinedInstance, Study
from node.db.types import utcnow
from node.dicom.header import HeaderError, parse_header
from node.dicom.ingest import describe_instance, touch_study
from node.states import QuarantineReason, QuarantineState
from node.storage import InstanceStore


class QuarantineError(ValueError):
    """The resolution is not possible (the message says why)."""


class QuarantineNotFound(QuarantineError):
    """No quarantined instance has that id."""


def _locked(session: Session, quarantine_id: int) -> QuarantinedInstance:
    item = session.get(QuarantinedInstance, quarantine_id, with_for_update=True,
                       populate_existing=True)
    if item is None:
        raise QuarantineNotFound(f"no quarantined instance {quarantine_id}")
    if item.state != QuarantineState.QUARANTINED or item.path is None:
        raise QuarantineError(f"the instance is already {item.state.name.lower()}")
    return item


def _still_referenced(sessions: sessionmaker[Session], path: str) -> bool:
    """Whether another quarantined row keeps ``path`` (identical copies share one file)."""
    with sessions() as session:
        return session.scalar(select(QuarantinedInstance.id).where(
            QuarantinedInstance.path == path).limit(1)) is not None


def _audit(session: Session, now: dt.datetime, actor: str, user_id: int, action: str,
           item: QuarantinedInstance, details: dict[str, Any]) -> None:
    session.add(AuditEvent(
        at=now, actor=actor, user_id=user_id, action=action, object_type="quarantine",
        object_id=str(item.id), study_id=item.study_id,
        details={"sop_instance_uid": item.sop_instance_uid, "reason": item.reason.name,
                 "sha256": item.sha256, "calling_ae": item.calling_ae, **details},
    ))


def accept(sessions: sessionmaker[Session], store: InstanceStore, quarantine_id: int, *,
           actor: str, user_id: int, now: dt.datetime | None = None) -> int:
    """Accept a quarantined instance into the study it was sent to.

    Returns
    -------
    int
        The new instance's id.

    Raises
    ------
    QuarantineNotFound
        If there is no such quarantined instance.
    QuarantineError
        If it was already resolved, conflicts with a stored instance (only discard is
        possible then), its study is gone, or its file no longer reads as it was received.
    """
    now = now or utcnow()
    written: str | None = None
    try:
        with sessions.begin() as session:
            item = _locked(session, quarantine_id)
            if item.reason != QuarantineReason.PATIENT_IDENTITY_CONFLICT:
                raise QuarantineError(
                    "a copy that conflicts with a stored instance cannot be accepted (the "
                    "acknowledged instance is never replaced or moved); discard it")
            study = session.scalars(select(Study).where(
                Study.study_instance_uid == item.study_instance_uid).with_for_update()
            ).one_or_none()
            if study is None:
                raise QuarantineError("the study it was sent to is no longer stored")
            if session.scalar(select(Instance.id).where(
                    Instance.sop_instance_uid == item.sop_instance_uid)) is not None:
                raise QuarantineError("an instance with this SOP Instance UID is stored now")
            quarantined_path = item.path
            assert quarantined_path is not None
            data = store.absolute(quarantined_path).read_bytes()
            try:
                header = parse_header(data)
            except HeaderError as exc:
                raise QuarantineError(f"the quarantined file does not read: {exc}") from exc
            written = store.relative_path(item.study_instance_uid, item.series_instance_uid,
                                          item.sop_instance_uid, item.sha256)
            store.write(written, data)
            instance = Instance(sop_instance_uid=item.sop_instance_uid, study_id=study.id)
            describe_instance(instance, header)
            instance.path = written
            instance.size_bytes = len(data)
            instance.sha256 = item.sha256
            instance.calling_ae = item.calling_ae
            instance.received_at = now
            session.add(instance)
            # The study's identity stays its own: only its other facts may be filled in.
            kept_identity = dataclasses.replace(
                header, patient={key: None for key in header.patient})
            touch_study(session, study, kept_identity, now)
            session.flush()
            item.state = QuarantineState.ACCEPTED
            item.path = None
            item.study_id = study.id
            item.resolved_at = now
            item.resolved_by_id = user_id
            _audit(session, now, actor, user_id, "quarantine_accepted", item,
                   {"instance_id": instance.id, "conflicting": item.detail})
            instance_id = instance.id
    except BaseException:
        if written is not None:
            store.remove(written)
        raise
    if not _still_referenced(sessions, quarantined_path):
        store.remove(quarantined_path)
    return instance_id


def discard(sessions: sessionmaker[Session], store: InstanceStore, quarantine_id: int, *,
            actor: str, user_id: int, now: dt.datetime | None = None) -> None:
    """Discard a quarantined instance: its file is deleted, its row stays DISCARDED.

    Raises
    ------
    QuarantineNotFound
        If there is no such quarantined instance.
    QuarantineError
        If it was already resolved.
    """
    now = now or utcnow()
    with sessions.begin() as session:
        item = _locked(session, quarantine_id)
        path = item.path
        assert path is not None
        item.state = QuarantineState.DISCARDED
        item.path = None
        item.resolved_at = now
        item.resolved_by_id = user_id
        _audit(session, now, actor, user_id, "quarantine_discarded", item, {})
    if not _still_referenced(sessions, path):
        store.remove(path)
