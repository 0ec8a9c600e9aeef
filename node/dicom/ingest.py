"""Receiving one instance: validate, store durably, index — then answer.

:class:`InstanceIngestor` is the whole C-STORE behaviour as a plain object:
the SCP hands it the received bytes and sends back the status it returns.
Nothing here raises to the caller; every outcome is a DICOM status.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import AuditEvent, Instance, QuarantinedInstance, Study
from node.db.types import utcnow
from node.dicom.buffers import EncodedBuffer, binary_stream
from node.dicom.header import ControlCharacterError, HeaderError, InstanceHeader, parse_header
from node.dicom.identity import IDENTITY_KEYWORDS, identity_conflicts
from node.dicom.refusals import RefusalRecorder
from node.dicom.statuses import StoreStatus
from node.logs import log_event
from node.states import QuarantineReason, QuarantineState, StudyState
from node.storage import InstanceStore, StorageFullError
from workers.inference.dicom_limits import (
    DEFAULT_LIMITS,
    DatasetLimits,
    LimitExceeded,
    check_encoded,
)

logger = logging.getLogger(__name__)

#: Instances at least this large are hashed on a helper thread while their bytes
#: are written; smaller ones are hashed inline (a thread hand-off would cost more).
BACKGROUND_HASH_MIN_BYTES = 1 << 20

#: States in which a new instance reopens the study for assembly.
REOPENING_STATES = frozenset({StudyState.STABLE, StudyState.IGNORED})


def _sha256_hex(data: EncodedBuffer) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ReceivedInstance:
    """One C-STORE request as the SCP saw it."""

    encoded: EncodedBuffer
    """Preamble, file meta and dataset, exactly as they will be stored: bytes, or a
    read-only view of ``spooled`` mapped, which the caller releases after
    :meth:`InstanceIngestor.ingest` returns (nothing here keeps a reference to it)."""
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    calling_ae: str
    actor: str | None = None
    """Who sent it, for the audit trail, when not the calling AE (a STOW-RS user)."""
    expected_study_uid: str | None = None
    """The study it must belong to (the study of a STOW-RS URL), else 0xC409."""
    spooled: Path | None = None
    """A file on the storage volume that already holds exactly ``encoded`` (written as
    the data set arrived, not yet fsynced), or ``None``. When given, the store links
    this file into place instead of writing the bytes again; the caller removes it
    after :meth:`InstanceIngestor.ingest` returns."""
    digest: Future[str] | None = None
    """The SHA-256 (hex) of ``encoded``, computed while it arrived, or ``None`` (then
    the bytes are hashed here)."""

    @property
    def audit_actor(self) -> str:
        """The audit trail's actor: the user, or ``ae:`` and the calling AE title."""
        return self.actor or f"ae:{self.calling_ae}"


@dataclass(frozen=True)
class IngestOutcome:
    """The status to answer and what happened."""

    status: StoreStatus
    reason: str
    study_id: int | None = None
    instance_id: int | None = None
    duplicate: bool = False
    quarantined: QuarantineReason | None = None
    quarantine_id: int | None = None


@dataclass(frozen=True)
class _Stored:
    """The acknowledged instance already stored under a SOP Instance UID."""

    id: int
    path: str
    sha256: str
    study_id: int
    study_uid: str
    series_uid: str


@dataclass(frozen=True)
class _Plan:
    """Where a received instance goes: its study, or quarantine for ``quarantine``."""

    digest: str | None
    existing: _Stored | None
    quarantine: QuarantineReason | None
    conflicts: list[str]


class _Replan(Exception):
    """What the plan assumed changed before the row was written; plan again."""


def _identity_of(study: Study) -> dict[str, str | None]:
    return {name: getattr(study, name) for name in IDENTITY_KEYWORDS}


class InstanceIngestor:
    """Store-then-index, answering Success only once both are durable.

    Parameters
    ----------
    store
        Where instance files go.
    session_factory
        Database sessions.
    limits
        The largest inflated data set and image accepted, checked before parsing.
    """

    def __init__(self, store: InstanceStore, session_factory: sessionmaker[Session],
                 limits: DatasetLimits = DEFAULT_LIMITS) -> None:
        self.store = store
        self.session_factory = session_factory
        self.limits = limits
        self.refusals = RefusalRecorder(session_factory)
        # Threads start on first use only (instances of 1 MiB or more).
        self._hasher = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ingest-hash")

    def ingest(self, received: ReceivedInstance) -> IngestOutcome:
        """Handle one received instance; never raises.

        Returns
        -------
        IngestOutcome
            ``SUCCESS`` only when the file is fsynced and its row committed.
        """
        try:
            outcome = self._ingest(received)
        except Exception:  # the SCP must answer, whatever happened
            logger.exception(
                "instance_failed",
                extra={"sop_instance_uid": received.requested_sop_instance_uid},
            )
            outcome = IngestOutcome(StoreStatus.PROCESSING_FAILURE, "internal error")
        level = logging.INFO if outcome.status == StoreStatus.SUCCESS else logging.WARNING
        log_event(
            logger,
            level,
            "instance_received" if outcome.status == StoreStatus.SUCCESS else "instance_refused",
            status=f"0x{outcome.status:04X}",
            reason=outcome.reason,
            sop_instance_uid=received.requested_sop_instance_uid,
            calling_ae=received.calling_ae,
            study_id=outcome.study_id,
            instance_id=outcome.instance_id,
            quarantined=outcome.quarantined.name if outcome.quarantined else None,
            bytes=len(received.encoded),
        )
        return outcome

    def _ingest(self, received: ReceivedInstance) -> IngestOutcome:
        capacity = self.store.capacity()
        if not capacity.accepting:
            return IngestOutcome(
                StoreStatus.OUT_OF_RESOURCES,
                f"storage below watermark ({capacity.free_bytes // 2**20} MiB free, "
                f"{capacity.used_percent:.1f}% used)",
            )
        over_limit = self._over_limit(received)
        if over_limit is not None:
            return over_limit
        try:
            header = parse_header(received.encoded)
        except ControlCharacterError as exc:
            self._audit_refusal(received, str(exc), exc.keyword)
            return IngestOutcome(StoreStatus.CANNOT_UNDERSTAND, str(exc))
        except HeaderError as exc:
            return IngestOutcome(StoreStatus.CANNOT_UNDERSTAND, str(exc))
        if header.sop_class_uid != received.requested_sop_class_uid:
            return IngestOutcome(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Class UID in the dataset differs from the request",
            )
        if header.sop_instance_uid != received.requested_sop_instance_uid:
            return IngestOutcome(
                StoreStatus.CANNOT_UNDERSTAND,
                "SOP Instance UID in the dataset differs from the request",
            )
        if received.expected_study_uid is not None \
                and header.study_instance_uid != received.expected_study_uid:
            return IngestOutcome(StoreStatus.STUDY_MISMATCH,
                                 "Study Instance UID differs from the study of the request")
        outcome, new_digest = self._store_new(header, received)
        if outcome is not None:
            return outcome
        digest: str | None = new_digest
        for attempt in (1, 2, 3):
            try:
                plan = self._plan(header, digest, received.encoded)
            except SQLAlchemyError as exc:
                return IngestOutcome(
                    StoreStatus.OUT_OF_RESOURCES, f"database unavailable: {exc.__class__.__name__}"
                )
            if isinstance(plan, IngestOutcome):
                return plan
            digest = plan.digest
            if plan.quarantine is not None:
                return self._quarantine(header, received, plan)
            outcome = self._store(header, received, plan, last_attempt=attempt == 3)
            if outcome is not None:
                return outcome
        return IngestOutcome(StoreStatus.OUT_OF_RESOURCES, "database conflict")

    def _store_new(self, header: InstanceHeader,
                   received: ReceivedInstance) -> tuple[IngestOutcome | None, str]:
        """Store an instance whose SOP Instance UID is new, in one transaction.

        The usual case: the bytes are staged while they are hashed, published under
        their digest-bearing name (never over an existing file), and the row is written
        in the same transaction that checks that the SOP Instance UID is unknown and the
        patient identity agrees with the study's. Anything else (a re-send, a conflict,
        a concurrent copy) is rolled back, the file removed if this call created it, and
        the outcome is ``None``: the caller then plans the instance against what is
        stored, as for every re-send.

        Returns
        -------
        tuple
            The outcome (``None``: plan and store as a known instance) and the digest.
        """
        folder = self.store.relative_folder(header.study_instance_uid,
                                            header.series_instance_uid)
        pending_digest = self._digest(received)
        try:
            staged = self._stage(folder, received)
        finally:
            digest = pending_digest.result()  # the hash reads the buffer: wait, whatever happened
        if isinstance(staged, IngestOutcome):
            return staged, digest
        relative = self.store.relative_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid, digest
        )
        try:
            created = self.store.publish_new(staged, relative)
        except OSError as exc:
            return IngestOutcome(
                StoreStatus.OUT_OF_RESOURCES, f"storage write failed: {exc.strerror}"), digest
        try:
            study_id, instance_id = self._index(header, received, relative, digest,
                                                new_only=True)
        except (_Replan, IntegrityError):
            if created:
                self.store.remove(relative)
            return None, digest
        except SQLAlchemyError as exc:
            if created:
                self.store.remove(relative)
            return IngestOutcome(
                StoreStatus.OUT_OF_RESOURCES, f"database unavailable: {exc.__class__.__name__}"
            ), digest
        return IngestOutcome(StoreStatus.SUCCESS, "stored", study_id=study_id,
                             instance_id=instance_id), digest

    def _plan(
        self, header: InstanceHeader, digest: str | None, data: EncodedBuffer
    ) -> _Plan | IngestOutcome:
        """Decide where the instance goes: its study, quarantine, or nowhere (a re-send)."""
        existing = self._existing(header.sop_instance_uid)
        if existing is None:
            conflicts = self._identity_conflicts(header)
            if conflicts:
                return _Plan(digest or _sha256_hex(data), None,
                             QuarantineReason.PATIENT_IDENTITY_CONFLICT, conflicts)
            return _Plan(digest, None, None, [])
        digest = digest or _sha256_hex(data)
        if existing.sha256 == digest:
            if self.store.absolute(existing.path).is_file():
                return IngestOutcome(StoreStatus.SUCCESS, "identical re-send", duplicate=True)
            return _Plan(digest, existing, None, [])  # stored again after a purge
        if (existing.study_uid, existing.series_uid) != (
                header.study_instance_uid, header.series_instance_uid):
            return _Plan(digest, existing, QuarantineReason.STUDY_CONFLICT,
                         ["StudyInstanceUID" if existing.study_uid != header.study_instance_uid
                          else "SeriesInstanceUID"])
        conflicts = self._identity_conflicts(header)
        if conflicts:
            return _Plan(digest, existing, QuarantineReason.PATIENT_IDENTITY_CONFLICT, conflicts)
        return _Plan(digest, existing, QuarantineReason.CONTENT_CONFLICT, [])

    def _identity_conflicts(self, header: InstanceHeader) -> list[str]:
        with self.session_factory() as session:
            study = session.execute(
                select(Study).where(Study.study_instance_uid == header.study_instance_uid)
            ).scalar_one_or_none()
            if study is None:
                return []
            return identity_conflicts(_identity_of(study), header.patient)

    def _store(self, header: InstanceHeader, received: ReceivedInstance, plan: _Plan, *,
               last_attempt: bool) -> IngestOutcome | None:
        """Write and index an instance joining its study; ``None``: plan again."""
        folder = self.store.relative_folder(header.study_instance_uid, header.series_instance_uid)
        if plan.digest is None:
            # Hash while the bytes are written and fsynced (both release the GIL), then
            # name the file after the digest.
            pending_digest = self._digest(received)
            try:
                staged = self._stage(folder, received)
            finally:
                digest = pending_digest.result()
        else:
            digest = plan.digest
            staged = self._stage(folder, received)
        if isinstance(staged, IngestOutcome):
            return staged
        relative = self.store.relative_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid, digest
        )
        keep = plan.existing.path if plan.existing is not None else None
        try:
            self.store.publish(staged, relative)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._discard(relative, keep)
            return IngestOutcome(
                StoreStatus.OUT_OF_RESOURCES, f"storage write failed: {exc.strerror}"
            )
        try:
            study_id, instance_id = self._index(header, received, relative, digest)
        except _Replan:
            # Another association stored this SOP Instance UID, or another patient's
            # instance in this study, since the plan was made: plan again.
            self._discard(relative, keep)
            return None
        except IntegrityError:
            # A concurrent association created the same study or instance first; the
            # next pass finds it.
            self._discard(relative, keep)
            return IngestOutcome(StoreStatus.OUT_OF_RESOURCES, "database conflict") \
                if last_attempt else None
        except SQLAlchemyError as exc:
            self._discard(relative, keep)
            return IngestOutcome(
                StoreStatus.OUT_OF_RESOURCES, f"database unavailable: {exc.__class__.__name__}"
            )
        return IngestOutcome(StoreStatus.SUCCESS, "stored", study_id=study_id,
                             instance_id=instance_id)

    def _quarantine(self, header: InstanceHeader, received: ReceivedInstance,
                    plan: _Plan) -> IngestOutcome:
        """Keep the instance aside (answered Success: the sender's data is kept)."""
        assert plan.quarantine is not None and plan.digest is not None
        digest = plan.digest
        try:
            with self.session_factory() as session:
                kept = session.scalar(select(QuarantinedInstance.id).where(
                    QuarantinedInstance.sop_instance_uid == header.sop_instance_uid,
                    QuarantinedInstance.sha256 == digest,
                    QuarantinedInstance.state == QuarantineState.QUARANTINED))
        except SQLAlchemyError as exc:
            return IngestOutcome(
                StoreStatus.OUT_OF_RESOURCES, f"database unavailable: {exc.__class__.__name__}")
        if kept is not None:
            return IngestOutcome(StoreStatus.SUCCESS, "identical re-send of a quarantined "
                                 "instance", duplicate=True, quarantine_id=kept)
        relative = self.store.quarantine_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid, digest)
        folder, _, _ = relative.rpartition("/")
        staged = self._stage(folder, received)
        if isinstance(staged, IngestOutcome):
            return staged
        try:
            self.store.publish(staged, relative)
        except OSError as exc:
            return IngestOutcome(
                StoreStatus.OUT_OF_RESOURCES, f"storage write failed: {exc.strerror}")
        try:
            study_id, quarantine_id = self._record_quarantine(header, received, plan, relative)
        except SQLAlchemyError as exc:
            # A concurrent identical copy may have recorded the same file: keep it then.
            with contextlib.suppress(SQLAlchemyError), self.session_factory() as session:
                if session.scalar(select(QuarantinedInstance.id).where(
                        QuarantinedInstance.path == relative).limit(1)) is None:
                    self.store.remove(relative)
            return IngestOutcome(
                StoreStatus.OUT_OF_RESOURCES, f"database unavailable: {exc.__class__.__name__}")
        return IngestOutcome(StoreStatus.SUCCESS, f"quarantined: {plan.quarantine.value}",
                             study_id=study_id, quarantine_id=quarantine_id,
                             quarantined=plan.quarantine)

    def _record_quarantine(self, header: InstanceHeader, received: ReceivedInstance,
                           plan: _Plan, relative: str) -> tuple[int | None, int]:
        assert plan.quarantine is not None and plan.digest is not None
        now = utcnow()
        with self.session_factory.begin() as session:
            study_id = session.scalar(select(Study.id).where(
                Study.study_instance_uid == header.study_instance_uid))
            kept = QuarantinedInstance(
                state=QuarantineState.QUARANTINED, reason=plan.quarantine,
                detail=", ".join(plan.conflicts) or None,
                sop_instance_uid=header.sop_instance_uid, sop_class_uid=header.sop_class_uid,
                study_instance_uid=header.study_instance_uid,
                series_instance_uid=header.series_instance_uid, study_id=study_id,
                instance_id=plan.existing.id if plan.existing is not None else None,
                patient_id=header.patient["patient_id"],
                issuer_of_patient_id=header.patient["issuer_of_patient_id"],
                patient_name=header.patient["patient_name"],
                patient_birth_date=header.patient["patient_birth_date"],
                path=relative, size_bytes=len(received.encoded), sha256=plan.digest,
                calling_ae=received.calling_ae, received_at=now,
            )
            session.add(kept)
            session.flush()
            session.add(AuditEvent(
                at=now, actor=received.audit_actor, action="instance_quarantined",
                object_type="instance", object_id=header.sop_instance_uid,
                study_id=study_id if study_id is not None else (
                    plan.existing.study_id if plan.existing is not None else None),
                details={
                    "reason": plan.quarantine.name, "quarantine_id": kept.id,
                    "conflicting": plan.conflicts, "sha256": plan.digest,
                    "stored_sha256": plan.existing.sha256 if plan.existing else None,
                    "bytes": len(received.encoded),
                },
            ))
            return study_id, kept.id

    def _audit_refusal(self, received: ReceivedInstance, reason: str, keyword: str) -> None:
        """Record a refused instance in the audit trail (best effort: the status stands)."""
        try:
            with self.session_factory.begin() as session:
                session.add(AuditEvent(
                    at=utcnow(), actor=received.audit_actor, action="instance_refused",
                    object_type="instance", object_id=received.requested_sop_instance_uid,
                    details={"status": f"0x{StoreStatus.CANNOT_UNDERSTAND:04X}",
                             "reason": reason, "attribute": keyword},
                ))
        except SQLAlchemyError:
            logger.warning("refusal_not_audited", extra={
                "sop_instance_uid": received.requested_sop_instance_uid})

    def _over_limit(self, received: ReceivedInstance) -> IngestOutcome | None:
        """Refuse (0xA700, audited) an instance that inflates or decodes past a limit."""
        try:
            encoded = received.encoded
            check_encoded(encoded if isinstance(encoded, bytes) else binary_stream(encoded),
                          self.limits)
        except LimitExceeded as exc:
            status = StoreStatus.OUT_OF_RESOURCES
            self.refusals.instance(calling_ae=received.calling_ae,
                                   sop_instance_uid=received.requested_sop_instance_uid,
                                   status=status, reason=str(exc),
                                   details={"limit": exc.limit, "bytes": len(received.encoded)})
            return IngestOutcome(status, f"over {exc.limit}: {exc}")
        return None

    def _digest(self, received: ReceivedInstance) -> Future[str]:
        """The SHA-256 of the received bytes: the one computed as they arrived, else
        started here, on a helper thread when large, else inline."""
        if received.digest is not None:
            return received.digest
        data = received.encoded
        if len(data) < BACKGROUND_HASH_MIN_BYTES:
            done: Future[str] = Future()
            done.set_result(_sha256_hex(data))
            return done
        return self._hasher.submit(_sha256_hex, data)

    def _stage(self, folder: str, received: ReceivedInstance) -> Path | IngestOutcome:
        """Write the bytes (or link the spooled file) durably under a temporary name, or
        say why not."""
        try:
            if received.spooled is not None:
                return self.store.stage_file(folder, received.spooled)
            return self.store.stage(folder, received.encoded)
        except StorageFullError:
            return IngestOutcome(StoreStatus.OUT_OF_RESOURCES, "storage volume is full")
        except OSError as exc:
            return IngestOutcome(
                StoreStatus.OUT_OF_RESOURCES, f"storage write failed: {exc.strerror}"
            )

    def _existing(self, sop_instance_uid: str) -> _Stored | None:
        with self.session_factory() as session:
            row = session.execute(
                select(Instance.id, Instance.path, Instance.sha256, Instance.study_id,
                       Study.study_instance_uid, Instance.series_instance_uid)
                .join(Study, Study.id == Instance.study_id)
                .where(Instance.sop_instance_uid == sop_instance_uid)
            ).first()
        return _Stored(*row) if row else None

    def _discard(self, relative: str, keep: str | None) -> None:
        """Remove a file written for a row that was not committed."""
        if relative != keep:
            self.store.remove(relative)

    def _index(
        self, header: InstanceHeader, received: ReceivedInstance, relative: str, digest: str,
        *, new_only: bool = False,
    ) -> tuple[int, int]:
        """Insert (or, after a purge, restore) the instance row and touch its study.

        With ``new_only``, any row of the SOP Instance UID, purged or not, makes the
        insert fail with :class:`~sqlalchemy.exc.IntegrityError` (the caller plans a known
        instance first).

        Returns
        -------
        tuple
            Study id and instance id.

        Raises
        ------
        _Replan
            If, under the study lock, the SOP Instance UID is stored with other content or
            the instance's patient identity disagrees with the study's.
        IntegrityError
            With ``new_only``, if the SOP Instance UID has a row.
        """
        now = utcnow()
        with self.session_factory.begin() as session:
            # Lock the study row: a concurrent assembly tick completing the study must
            # either see this instance or be seen by it (and then reopen the study).
            study = session.execute(
                select(Study)
                .where(Study.study_instance_uid == header.study_instance_uid)
                .with_for_update()
            ).scalar_one_or_none()
            if study is None:
                study = Study(
                    study_instance_uid=header.study_instance_uid,
                    state=StudyState.RECEIVING,
                    calling_ae=received.calling_ae,
                    first_received_at=now,
                    last_received_at=now,
                    **header.patient,
                    **header.study,
                )
                session.add(study)
                session.flush()
            # A new instance needs no lookup: a row of its SOP Instance UID, purged or not,
            # fails the insert on the unique constraint (IntegrityError), which the caller
            # treats as it treats _Replan. One round trip fewer on PostgreSQL.
            instance = None if new_only else session.execute(
                select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid)
            ).scalar_one_or_none()
            if instance is not None:
                if instance.sha256 != digest or instance.study_id != study.id:
                    raise _Replan()
                if instance.purged_at is None:
                    return study.id, instance.id  # a concurrent identical re-send
            elif identity_conflicts(_identity_of(study), header.patient):
                raise _Replan()
            touch_study(session, study, header, now)
            restored = instance is not None
            if instance is None:
                instance = Instance(sop_instance_uid=header.sop_instance_uid)
                session.add(instance)
            instance.study_id = study.id
            describe_instance(instance, header)
            instance.path = relative
            instance.size_bytes = len(received.encoded)
            instance.sha256 = digest
            instance.calling_ae = received.calling_ae
            instance.received_at = now
            instance.purged_at = None  # a re-send after retention clean-up is stored again
            session.flush()
            session.add(
                AuditEvent(
                    at=now,
                    actor=received.audit_actor,
                    action="instance_restored" if restored else "instance_received",
                    object_type="instance",
                    object_id=header.sop_instance_uid,
                    study_id=study.id,
                    details={"bytes": len(received.encoded), "sha256": digest},
                )
            )
            return study.id, instance.id


def touch_study(session: Session, study: Study, header: InstanceHeader, now: dt.datetime) -> None:
    """Record an instance joining a study, and reopen the study where that applies.

    Facts the study lacks are taken from the instance; a STABLE or IGNORED study goes back
    to RECEIVING; a study further on records a ``late_instance`` audit event.
    """
    study.last_received_at = now
    for key, value in {**header.patient, **header.study}.items():
        if getattr(study, key) is None and value is not None:
            setattr(study, key, value)
    if study.state in REOPENING_STATES:
        study.state = StudyState.RECEIVING
        study.state_reason = None
        study.stable_at = None
    elif study.state != StudyState.RECEIVING:
        session.add(
            AuditEvent(
                at=now,
                actor="system",
                action="late_instance",
                object_type="study",
                object_id=study.study_instance_uid,
                study_id=study.id,
                details={"state": study.state.name},
            )
        )


def describe_instance(instance: Instance, header: InstanceHeader) -> None:
    """Copy the header facts the node indexes onto an instance row."""
    instance.sop_class_uid = header.sop_class_uid
    instance.series_instance_uid = header.series_instance_uid
    instance.series_number = header.series_number
    instance.instance_number = header.instance_number
    instance.modality = header.modality
    instance.body_part = header.body_part
    instance.view_position = header.view_position
    instance.image_laterality = header.image_laterality
    instance.series_description = header.series_description
    instance.image_type = header.image_type
    instance.conversion_type = header.conversion_type
    instance.transfer_syntax_uid = header.transfer_syntax_uid
    instance.rows = header.rows
    instance.columns = header.columns
