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

from node.db.models import AuditEvent, Instance, Study
from node.db.types import utcnow
from node.dicom.header import HeaderError, InstanceHeader, parse_header
from node.dicom.refusals import RefusalRecorder
from node.dicom.statuses import StoreStatus
from node.logs import log_event
from node.states import StudyState
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


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ReceivedInstance:
    """One C-STORE request as the SCP saw it."""

    encoded: bytes
    """Preamble, file meta and dataset, exactly as they will be stored."""
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    calling_ae: str


@dataclass(frozen=True)
class IngestOutcome:
    """The status to answer and what happened."""

    status: StoreStatus
    reason: str
    study_id: int | None = None
    instance_id: int | None = None
    duplicate: bool = False
    replaced: bool = False


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
        try:
            existing = self._existing(header.sop_instance_uid)
        except SQLAlchemyError as exc:
            return IngestOutcome(
                StoreStatus.OUT_OF_RESOURCES, f"database unavailable: {exc.__class__.__name__}"
            )
        folder = self.store.relative_folder(header.study_instance_uid, header.series_instance_uid)
        if existing is None:
            # A new instance, the usual case: hash while the bytes are written and
            # fsynced (both release the GIL), then name the file after the digest.
            pending_digest = self._digest(received.encoded)
            staged = self._stage(folder, received.encoded)
            digest = pending_digest.result()
        else:
            digest = _sha256_hex(received.encoded)
            if existing[1] == digest and self.store.absolute(existing[0]).is_file():
                return IngestOutcome(StoreStatus.SUCCESS, "identical re-send", duplicate=True)
            staged = self._stage(folder, received.encoded)
        if isinstance(staged, IngestOutcome):
            return staged

        relative = self.store.relative_path(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid, digest
        )
        try:
            self.store.publish(staged, relative)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._discard(relative, existing)
            return IngestOutcome(
                StoreStatus.OUT_OF_RESOURCES, f"storage write failed: {exc.strerror}"
            )

        for attempt in (1, 2):
            try:
                study_id, instance_id, old_path = self._index(header, received, relative, digest)
                break
            except IntegrityError:
                # A concurrent association created the same study or instance
                # first; the second pass finds it and updates it.
                if attempt == 2:
                    self._discard(relative, existing)
                    return IngestOutcome(StoreStatus.OUT_OF_RESOURCES, "database conflict")
            except SQLAlchemyError as exc:
                self._discard(relative, existing)
                return IngestOutcome(
                    StoreStatus.OUT_OF_RESOURCES, f"database unavailable: {exc.__class__.__name__}"
                )
        if old_path is not None and old_path != relative:
            self.store.remove(old_path)
        replaced = existing is not None and existing[1] != digest
        return IngestOutcome(
            StoreStatus.SUCCESS,
            "replaced a previous version" if replaced else "stored",
            study_id=study_id,
            instance_id=instance_id,
            replaced=replaced,
        )

    def _over_limit(self, received: ReceivedInstance) -> IngestOutcome | None:
        """Refuse (0xA700, audited) an instance that inflates or decodes past a limit."""
        try:
            check_encoded(received.encoded, self.limits)
        except LimitExceeded as exc:
            status = StoreStatus.OUT_OF_RESOURCES
            self.refusals.instance(calling_ae=received.calling_ae,
                                   sop_instance_uid=received.requested_sop_instance_uid,
                                   status=status, reason=str(exc),
                                   details={"limit": exc.limit, "bytes": len(received.encoded)})
            return IngestOutcome(status, f"over {exc.limit}: {exc}")
        return None

    def _digest(self, data: bytes) -> Future[str]:
        """Start the SHA-256 of ``data``: on a helper thread when large, else inline."""
        if len(data) < BACKGROUND_HASH_MIN_BYTES:
            done: Future[str] = Future()
            done.set_result(_sha256_hex(data))
            return done
        return self._hasher.submit(_sha256_hex, data)

    def _stage(self, folder: str, data: bytes) -> Path | IngestOutcome:
        """Write the bytes durably under a temporary name, or say why not."""
        try:
            return self.store.stage(folder, data)
        except StorageFullError:
            return IngestOutcome(StoreStatus.OUT_OF_RESOURCES, "storage volume is full")
        except OSError as exc:
            return IngestOutcome(
                StoreStatus.OUT_OF_RESOURCES, f"storage write failed: {exc.strerror}"
            )

    def _existing(self, sop_instance_uid: str) -> tuple[str, str] | None:
        with self.session_factory() as session:
            row = session.execute(
                select(Instance.path, Instance.sha256).where(
                    Instance.sop_instance_uid == sop_instance_uid
                )
            ).first()
        return (row[0], row[1]) if row else None

    def _discard(self, relative: str, existing: tuple[str, str] | None) -> None:
        """Remove a file written for a row that was not committed."""
        if existing is None or existing[0] != relative:
            self.store.remove(relative)

    def _index(
        self, header: InstanceHeader, received: ReceivedInstance, relative: str, digest: str
    ) -> tuple[int, int, str | None]:
        """Upsert study and instance rows in one transaction.

        Returns
        -------
        tuple
            Study id, instance id, and the previous file path when replaced.
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
            else:
                self._touch_study(session, study, header, now)

            instance = session.execute(
                select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid)
            ).scalar_one_or_none()
            old_path = instance.path if instance is not None else None
            if instance is None:
                instance = Instance(sop_instance_uid=header.sop_instance_uid)
                session.add(instance)
            instance.study_id = study.id
            instance.sop_class_uid = header.sop_class_uid
            instance.series_instance_uid = header.series_instance_uid
            instance.series_number = header.series_number
            instance.instance_number = header.instance_number
            instance.modality = header.modality
            instance.body_part = header.body_part
            instance.view_position = header.view_position
            instance.image_laterality = header.image_laterality
            instance.series_description = header.series_description
            instance.transfer_syntax_uid = header.transfer_syntax_uid
            instance.rows = header.rows
            instance.columns = header.columns
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
                    actor=f"ae:{received.calling_ae}",
                    action="instance_replaced" if old_path else "instance_received",
                    object_type="instance",
                    object_id=header.sop_instance_uid,
                    study_id=study.id,
                    details={"bytes": len(received.encoded), "sha256": digest},
                )
            )
            return study.id, instance.id, old_path

    @staticmethod
    def _touch_study(
        session: Session, study: Study, header: InstanceHeader, now: dt.datetime
    ) -> None:
        """Record new activity on a known study and reopen it where that applies."""
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
