"""Every lifecycle state in radnode, in one place.

The database stores the enum *names*; ``radnode studies --json`` prints them.
"""

from __future__ import annotations

import enum


class StudyState(enum.Enum):
    """Where a study is on its way from arrival to a signed report."""

    RECEIVING = "receiving"
    """Instances are arriving; the quiet period has not yet passed."""
    STABLE = "stable"
    """Complete and selected for drafting; no job yet."""
    QUEUED = "queued"
    """A drafting job is waiting for a worker."""
    DRAFTING = "drafting"
    """A worker is drafting the report."""
    DRAFTED = "drafted"
    """A draft report awaits a radiologist."""
    SIGNED = "signed"
    """A radiologist signed the report."""
    IGNORED = "ignored"
    """Not a study the node drafts (the reason is recorded)."""
    FAILED = "failed"
    """Drafting failed for good; an admin must look."""


class JobState(enum.Enum):
    """A drafting job's lifecycle."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"


class ReportState(enum.Enum):
    """A report version: the model's draft, a signed final, or an amendment."""

    DRAFT = "draft"
    FINAL = "final"
    AMENDED = "amended"


class ExportState(enum.Enum):
    """Delivery of one object (a report's SR, or a rejection note) to one destination.

    A destination without storage commitment has the object once it answered the C-STORE
    with Success: PENDING → SENT. A destination with ``storage_commitment = true`` has it
    only once it committed to keep it (PS3.4 Annex J): PENDING → COMMITMENT_PENDING →
    COMMITTED; a commitment refused or not reported in time goes back to RETRYING (the
    object is sent and committed again).
    """

    PENDING = "pending"
    """Waiting for its first attempt."""
    SENT = "sent"
    """Delivered to a destination without storage commitment (the C-STORE succeeded)."""
    COMMITMENT_PENDING = "commitment pending"
    """Stored by a commitment destination, which has not yet reported on its commitment."""
    COMMITTED = "committed"
    """The destination reported that it keeps every instance sent (delivered)."""
    RETRYING = "retrying"
    """An attempt failed; another is due at ``next_attempt_at``."""
    FAILED = "failed"
    """Given up: too old, or too many commitments refused (an admin must look)."""
    WITHDRAWN = "withdrawn"
    """A draft rejected or superseded before it was delivered: it is not sent any more."""


class ExportKind(enum.Enum):
    """What an export delivers."""

    REPORT = "report"
    """The report's SR (with the study's images when ``include_images`` is set)."""
    REJECTION_NOTE = "rejection note"
    """An IHE IOCM rejection note: a Key Object Selection Document telling a destination
    that received the report's draft SR that the draft is rejected or superseded."""


#: Export states in which the destination holds the object for good.
DELIVERED_EXPORT_STATES = frozenset({ExportState.SENT, ExportState.COMMITTED})
#: Export states still on their way to delivery.
UNDELIVERED_EXPORT_STATES = frozenset({ExportState.PENDING, ExportState.RETRYING,
                                       ExportState.COMMITMENT_PENDING})


class Role(enum.Enum):
    """What a web user may do."""

    RADIOLOGIST = "radiologist"
    ADMIN = "admin"
    WORKER = "worker"
    """A drafting worker's service account: reads instances over WADO-RS with a bearer
    token, and nothing else (it cannot sign in to the web pages)."""
    UPLOADER = "uploader"
    """Stores instances over STOW-RS (an import station, a scanner gateway, a person
    importing outside images) and reads nothing: its only page is its account page."""


class TokenScope(enum.Enum):
    """What a personal bearer token may be used for (within its holder's role)."""

    DICOMWEB_READ = "dicomweb-read"
    """QIDO-RS search, WADO-RS and WADO-URI retrieve."""
    DICOMWEB_STORE = "dicomweb-store"
    """STOW-RS store."""


#: The scopes each role's personal tokens may carry. A token is checked against its
#: holder's role on every request, so a lowered role narrows its tokens at once.
ROLE_SCOPES: dict[Role, frozenset[TokenScope]] = {
    Role.RADIOLOGIST: frozenset({TokenScope.DICOMWEB_READ}),
    Role.ADMIN: frozenset({TokenScope.DICOMWEB_READ}),
    Role.UPLOADER: frozenset({TokenScope.DICOMWEB_STORE}),
    Role.WORKER: frozenset(),
}


class IgnoreReason(enum.Enum):
    """Why a complete study is not drafted."""

    NOT_RADIOGRAPHY = "modality is not CR or DX"
    NOT_CHEST = "body part is not the chest"
    NO_FRONTAL_VIEW = "no frontal (PA/AP) view"
    NO_IMAGES = "no image instances"
    DERIVED_ONLY = "only secondary captures or derived images"
    NO_PATIENT_ID = "no PatientID: the study cannot be attributed to a patient"


class QuarantineReason(enum.Enum):
    """Why a received instance was kept aside instead of joining its study."""

    CONTENT_CONFLICT = "an instance with this SOP Instance UID and other content is stored"
    STUDY_CONFLICT = "this SOP Instance UID is stored under another study or series"
    PATIENT_IDENTITY_CONFLICT = "patient identity conflict"


class QuarantineState(enum.Enum):
    """What became of a quarantined instance."""

    QUARANTINED = "quarantined"
    """Kept aside, awaiting an admin; never served or drafted."""
    ACCEPTED = "accepted"
    """An admin accepted it into its study (it is an ordinary instance now)."""
    DISCARDED = "discarded"
    """An admin discarded it (its file is deleted; the row stays for the audit trail)."""
