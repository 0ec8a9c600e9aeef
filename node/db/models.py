"""SQLAlchemy models: the source of truth for every study, job, report and export."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from node.db.types import UTCDateTime, utcnow
from node.observations import Mention, Observation
from node.states import (
    ExportKind,
    ExportState,
    JobState,
    QuarantineReason,
    QuarantineState,
    ReportState,
    Role,
    StudyState,
)

UID = String(64)
AE_TITLE = String(16)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _enum(enum_cls: type[Any]) -> Enum:
    """Store an enum by name as a plain string column (portable, easy to migrate)."""
    return Enum(enum_cls, native_enum=False, length=24, validate_strings=True)


class Base(DeclarativeBase):
    """Declarative base with deterministic constraint names for migrations."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Study(Base):
    """One imaging study, identified by its Study Instance UID."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    state: Mapped[StudyState] = mapped_column(_enum(StudyState), default=StudyState.RECEIVING)
    state_reason: Mapped[str | None] = mapped_column(Text)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_id_text: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    referring_physician: Mapped[str | None] = mapped_column(String(324))
    reason_for_exam: Mapped[str | None] = mapped_column(Text)
    calling_ae: Mapped[str | None] = mapped_column(AE_TITLE)
    first_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    stable_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    urgent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Flagged for urgent attention (the labeler's triage flags); urgent studies lead the
    worklist."""
    urgent_findings: Mapped[list[str] | None] = mapped_column(JSON)
    """The triage flags behind ``urgent``, e.g. ``["pneumothorax"]``."""
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    instances: Mapped[list[Instance]] = relationship(
        back_populates="study", order_by="Instance.id", cascade="all, delete-orphan"
    )

    __table_args__ = (Index(None, "state", "last_received_at"),)


class Instance(Base):
    """One stored SOP instance; ``path`` is relative to the storage root."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    series_number: Mapped[int | None] = mapped_column(Integer)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    image_laterality: Mapped[str | None] = mapped_column(String(16))
    series_description: Mapped[str | None] = mapped_column(String(64))
    image_type: Mapped[str | None] = mapped_column(String(64))
    conversion_type: Mapped[str | None] = mapped_column(String(16))
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(AE_TITLE)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    purged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    """When the retention clean-up removed the file (the row stays; ``None`` while stored)."""

    study: Mapped[Study] = relationship(back_populates="instances")


class QuarantinedInstance(Base):
    """A received instance kept aside instead of joining its study (never served or drafted).

    ``path`` is relative to the storage root, under its ``quarantine/`` folder. The
    acknowledged instance it conflicts with (``instance_id``) is never changed by it.
    """

    __tablename__ = "quarantined_instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[QuarantineState] = mapped_column(
        _enum(QuarantineState), default=QuarantineState.QUARANTINED)
    reason: Mapped[QuarantineReason] = mapped_column(
        Enum(QuarantineReason, native_enum=False, length=32, validate_strings=True))
    detail: Mapped[str | None] = mapped_column(Text)
    """Which attributes conflict (names only, never their values)."""
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    study_id: Mapped[int | None] = mapped_column(
        ForeignKey("studies.id", ondelete="SET NULL"), index=True)
    """The study it would have joined (``None`` when no such study is stored)."""
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="SET NULL"))
    """The stored instance with the same SOP Instance UID, which stays what is served."""
    patient_id: Mapped[str | None] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    path: Mapped[str | None] = mapped_column(String(512))
    """The quarantined file; ``None`` once discarded or accepted (moved)."""
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(AE_TITLE)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    resolved_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class Job(Base):
    """A drafting job: one per study and model version (retries reuse the row)."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[str] = mapped_column(String(128))
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    task_id: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    error_class: Mapped[str | None] = mapped_column(String(128))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_traceback: Mapped[str | None] = mapped_column(Text)
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    """When an admin acknowledged the failure (it then leaves the triage list)."""
    acknowledged_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    worker_name: Mapped[str | None] = mapped_column(String(128))
    """The worker process that claimed the job last (its heartbeat name)."""
    worker_incarnation: Mapped[str | None] = mapped_column(String(32))
    """That process's incarnation: a restarted worker of the same name is another one."""
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("study_id", "model_version"),
        Index(None, "state", "lease_expires_at"),
    )


class User(Base):
    """A person who signs in to the web app."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(324))
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[Role] = mapped_column(_enum(Role))
    organization: Mapped[str | None] = mapped_column(String(64))
    person_identifier: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str | None] = mapped_column(String(16))
    """RFC 5646 tag of the reports this user signs (``[reports] language`` when unset)."""
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Report(Base):
    """One report version: the model's draft, a signed final, or an amendment."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), unique=True)
    state: Mapped[ReportState] = mapped_column(_enum(ReportState))
    findings: Mapped[str] = mapped_column(Text, default="")
    impression: Mapped[str] = mapped_column(Text, default="")
    raw_text: Mapped[str | None] = mapped_column(Text)
    labels: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    degenerate: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """The model's text is degenerate (a loop, no end token, a misplaced header): shown as
    such, never as an ordinary draft (see :mod:`workers.inference.degeneracy`)."""
    degeneracy_reasons: Mapped[list[str] | None] = mapped_column(JSON)
    """Why the draft is degenerate (:class:`~workers.inference.degeneracy.DegenerateReason`
    values), ``None`` when it is not."""
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(128))
    device_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID, unique=True)
    series_instance_uid: Mapped[str | None] = mapped_column(UID)
    sr_path: Mapped[str | None] = mapped_column(String(512))
    # The SR's series and status attributes, for Query/Retrieve (node.reports.sr_index).
    sr_series_number: Mapped[int | None] = mapped_column(Integer)
    sr_series_description: Mapped[str | None] = mapped_column(String(64))
    sr_instance_number: Mapped[int | None] = mapped_column(Integer)
    sr_completion_flag: Mapped[str | None] = mapped_column(String(16))
    sr_verification_flag: Mapped[str | None] = mapped_column(String(16))
    sr_content_date: Mapped[str | None] = mapped_column(String(8))
    sr_content_time: Mapped[str | None] = mapped_column(String(16))
    """The report's SR file, relative to the storage root (``None`` until written)."""
    pending_sr_data: Mapped[bytes | None] = mapped_column(
        LargeBinary, deferred=True, deferred_raiseload=True)
    """The draft SR of a worker without the node's storage folder, until the node writes
    it to storage and sets ``sr_path`` (see :mod:`node.reports.handover`). Not loaded with
    the row: a query that reads it asks for it (``undefer(Report.pending_sr_data)``);
    reading it otherwise raises rather than loading it behind the caller's back."""
    predecessor_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id"), unique=True)
    """The version this one supersedes: the draft it signs or the final it amends. Unique:
    a version is superseded at most once, so a repeated sign-off cannot make two finals."""
    signed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    signed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    signed_evidence: Mapped[dict[str, str] | None] = mapped_column(JSON)
    """What the radiologist saw when signing: SOP Instance UID to the SHA-256 of each
    instance file (see :mod:`node.reports.evidence`); ``None`` for drafts."""
    rejected_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    """When a radiologist rejected this draft as unusable (the study stays DRAFTED)."""
    rejected_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    rejection_reason: Mapped[str | None] = mapped_column(Text)
    amendment_reason: Mapped[str | None] = mapped_column(Text)
    """Why this version amends the one it supersedes (the radiologist's words; also in its
    SR and the ``report_amended`` audit event); ``None`` for drafts and first signatures."""
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ObservationAgreement(Base):
    """What a draft and the report signed from it say about one CheXpert observation.

    One row per signed draft and observation, written at sign-off; agreement, precision
    and recall over a window are computed from these rows (see :mod:`node.quality`). The
    report links are cleared, not the rows, when reports are deleted, so the history of a
    model version outlives the studies it was measured on.
    """

    __tablename__ = "observation_agreement"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    draft_report_id: Mapped[int | None] = mapped_column(
        ForeignKey("reports.id", ondelete="SET NULL"), index=True)
    final_report_id: Mapped[int | None] = mapped_column(
        ForeignKey("reports.id", ondelete="SET NULL"))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    observation: Mapped[Observation] = mapped_column(
        Enum(Observation, native_enum=False, length=32, validate_strings=True))
    draft_mention: Mapped[Mention] = mapped_column(_enum(Mention))
    final_mention: Mapped[Mention] = mapped_column(_enum(Mention))
    signed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("final_report_id", "observation"),
        Index(None, "model_name", "model_version", "signed_at"),
    )


class Export(Base):
    """Delivery of one report's SR, or of a rejection note about it, to one destination AE."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"))
    destination_ae: Mapped[str] = mapped_column(AE_TITLE)
    kind: Mapped[ExportKind] = mapped_column(_enum(ExportKind), default=ExportKind.REPORT,
                                             server_default=ExportKind.REPORT.name)
    """The report's SR, or a rejection note about the report (a draft rejected or
    superseded after this destination received it)."""
    object_path: Mapped[str | None] = mapped_column(String(512))
    """The file a rejection note export sends (relative to the storage root); ``None`` for
    a report export, which sends the report's SR."""
    object_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    """The SOP Instance UID of that file."""
    state: Mapped[ExportState] = mapped_column(_enum(ExportState), default=ExportState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    """When the destination last answered the C-STORE with Success."""
    commitment_transaction_uid: Mapped[str | None] = mapped_column(UID, unique=True)
    """The Transaction UID of the latest storage commitment request (a new one per
    attempt); an N-EVENT-REPORT naming any other is refused."""
    commitment_references: Mapped[list[list[str]] | None] = mapped_column(JSON)
    """``[SOP Class UID, SOP Instance UID]`` of each instance the request named."""
    commitment_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    committed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    """When the destination reported that it committed to keep every instance."""
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    """When an admin acknowledged or discarded the failure (it leaves the triage list)."""
    acknowledged_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("report_id", "destination_ae", "kind"),
        Index(None, "state", "next_attempt_at"),
    )


class AuditEvent(Base):
    """Who did what to which object, and when. Rows are only ever added."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(64), index=True)
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(128))
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class LoginAttemptWindow(Base):
    """Failed logins of one throttle key in its current window: one row per key, a counter.

    ``key_hash`` is the SHA-256 of the key: the lower-cased username with the client
    address, or the client address alone. An attempt is counted *before* its password is
    checked (a conditional update), so concurrent attempts cannot pass the limit; rows of
    windows that have ended are deleted as new attempts arrive.
    """

    __tablename__ = "login_attempt_windows"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    """Attempts counted in the window (a success takes its own back)."""
    refusals: Mapped[int] = mapped_column(Integer, default=0)
    """Attempts refused in the window because the limit was reached."""


class WebSession(Base):
    """A login to the web app; the browser holds a signed random token, this row its hash."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    client_address: Mapped[str | None] = mapped_column(String(64))


class ServiceToken(Base):
    """A bearer token of a service account (a drafting worker on another host).

    The token itself is shown once when issued; the row keeps its SHA-256 hash.
    """

    __tablename__ = "service_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class AccessToken(Base):
    """A person's bearer token for DICOMweb (a viewer on another origin, a desktop client).

    The token is shown once when issued; the row keeps its SHA-256. ``scopes`` are the
    :class:`~node.states.TokenScope` values granted at issue; each request is allowed only
    what the holder's role allows *now* as well, and only while the holder is active,
    the token unrevoked and unexpired.
    """

    __tablename__ = "access_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WorkerHeartbeat(Base):
    """The latest beat of one drafting worker process: where it runs and what it holds."""

    __tablename__ = "worker_heartbeats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker_name: Mapped[str] = mapped_column(String(128), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(32))
    """``cpu``, ``cuda`` or ``cuda:N``."""
    gpu_name: Mapped[str | None] = mapped_column(String(128))
    gpu_memory_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    gpu_memory_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(128))
    jobs_in_flight: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_beat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    incarnation: Mapped[str | None] = mapped_column(String(32))
    """Random per process start: tells a restarted worker from its previous run."""
    broken_reason: Mapped[str | None] = mapped_column(Text)
    """Why the worker cannot draft (its model failed to load); it takes no task then."""


class WorkingCopy(Base):
    """A radiologist's unsigned text of one report, saved while they type.

    One row per user and report version; it is replaced on every save and deleted once
    the user signs, amends or discards it.
    """

    __tablename__ = "report_working_copies"
    __table_args__ = (UniqueConstraint("user_id", "report_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="CASCADE"),
                                           index=True)
    findings: Mapped[str] = mapped_column(Text, default="")
    impression: Mapped[str] = mapped_column(Text, default="")
    saved_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class StudyPresence(Base):
    """Who has a study open: the study page's heartbeat, one row per user and study."""

    __tablename__ = "study_presence"
    __table_args__ = (UniqueConstraint("user_id", "study_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"),
                                          index=True)
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class DestinationHealth(Base):
    """How sending to one destination AE went lately, one row per AE title.

    Written with each export's outcome; the monitoring page and ``/metrics`` read it.
    """

    __tablename__ = "destination_health"

    destination_ae: Mapped[str] = mapped_column(AE_TITLE, primary_key=True)
    last_success_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_failure_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    """Failed attempts since the last success."""
