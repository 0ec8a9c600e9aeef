"""Settings of the DICOM side: the listener, its peers and limits, and the destinations
reports are exported to."""

from __future__ import annotations

import enum
import os
import socket
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from node.config.base import Section, check_ae_title


class TlsSettings(Section):
    """TLS for DICOM associations (DICOM PS3.15 Annex B secure transport)."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False


class DicomPeer(Section):
    """A calling AE the listener accepts, and what it may do.

    ``store``: send instances (C-STORE). ``query``: C-FIND. ``retrieve``: C-GET, and
    C-MOVE to the destinations named in ``[[destinations]]``. A peer with ``host`` set
    is accepted only from that address; with TLS, its client certificate must name it
    (``tls_common_name``, or the AE title itself when that is unset).
    """

    ae_title: str
    store: bool = True
    query: bool = False
    retrieve: bool = False
    host: str | None = None
    """The peer's IP address; associations from any other address are rejected."""
    tls_common_name: str | None = None
    """The subject common name of the client certificate issued to this peer."""

    @field_validator("ae_title")
    @classmethod
    def _check_peer_ae(cls, value: str) -> str:
        return check_ae_title(value)


class DatasetLimitSettings(Section):
    """The largest data set inflated and the largest image decoded, checked before
    either happens (an instance over a limit is refused with 0xA700)."""

    max_inflated_bytes: int = Field(256 * 2**20, ge=1)
    """Largest size of a Deflated Explicit VR Little Endian data set once inflated."""
    max_pixels: int = Field(64 * 2**20, ge=1)
    """Largest Rows x Columns x NumberOfFrames x SamplesPerPixel."""
    max_pixel_bytes: int = Field(512 * 2**20, ge=1)
    """Largest decoded pixel data in bytes (pixels x BitsAllocated / 8)."""


class DicomSettings(Section):
    """The DICOM listener: AE title, port, access policy and timeouts.

    A ``port`` of 0 binds a free port chosen by the system (embedded runs, tests).
    """

    port: int = Field(11112, ge=0, le=65535)
    bind_address: str = "0.0.0.0"
    ae_title: str = "RADNODE"
    allowed_calling_aes: list[str] = Field(default_factory=list)
    """Calling AEs accepted with every permission (store, query, retrieve). With
    ``peers``, both lists are accepted; with neither, any AE is (an open node)."""
    peers: list[DicomPeer] = Field(default_factory=list)
    """Calling AEs accepted, each with its own permissions."""
    require_called_ae: bool = False
    max_pdu_size: int = Field(0, ge=0, le=0xFFFFFFFF)
    """Largest P-DATA PDU the node accepts, in bytes, offered to every peer at
    association time; 0 means no limit (fastest for large images)."""
    max_associations: int = Field(32, ge=1)
    """Associations served at once; one more is rejected (transient, local limit
    exceeded) until one ends."""
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(120.0, gt=0)
    network_timeout: float = Field(120.0, gt=0)
    association_request_timeout: float = Field(5.0, gt=0)
    """Seconds a connection has to deliver its whole A-ASSOCIATE-RQ (TLS handshake
    included); it is closed otherwise."""
    pdu_progress_timeout: float = Field(10.0, gt=0)
    """Seconds in which a PDU being received must complete, or advance by 64 KiB; a
    peer trickling slower is cut off and its slot freed."""
    max_pending_per_address: int = Field(8, ge=1)
    """Connections from one address still sending their A-ASSOCIATE-RQ; more are closed."""
    max_pending: int = Field(64, ge=1)
    """Connections from all addresses still sending their A-ASSOCIATE-RQ."""
    max_associations_per_address: int = Field(8, ge=1)
    """Associations served at once for one source address."""
    max_associations_per_ae: int = Field(8, ge=1)
    """Associations served at once for one calling AE title."""
    listener_processes: int = Field(1, ge=1, le=64)
    """Processes accepting associations on the port (Linux, ``SO_REUSEPORT``): above 1,
    ``radnode serve`` runs that many minus one listener processes beside its own, so
    that concurrent senders are not served by one Python interpreter. The association
    limits above hold for all of them together."""
    limits: DatasetLimitSettings = Field(default_factory=DatasetLimitSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @field_validator("ae_title")
    @classmethod
    def _check_own_ae(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _check_allowed(cls, values: list[str]) -> list[str]:
        return [check_ae_title(v) for v in values]

    @model_validator(mode="after")
    def _check_peers(self) -> DicomSettings:
        titles = [p.ae_title for p in self.peers]
        if len(set(titles)) != len(titles):
            raise ValueError("dicom.peers names an AE title twice")
        return self

    @field_validator("listener_processes")
    @classmethod
    def _check_listener_processes(cls, value: int) -> int:
        if value > 1 and not (hasattr(socket, "SO_REUSEPORT") and hasattr(os, "memfd_create")):
            raise ValueError("dicom.listener_processes above 1 needs Linux (SO_REUSEPORT)")
        return value


class DestinationExports(enum.Enum):
    """Which of the node's reports a destination receives automatically."""

    FINALS_ONLY = "finals_only"
    """Signed (and amended) reports only: no unverified draft reaches the destination."""
    DRAFTS_AND_FINALS = "drafts_and_finals"
    """Every draft as soon as it is written, then the signed reports (and, when a draft
    it received is rejected or superseded, an IOCM rejection note)."""


class Destination(Section):
    """A DICOM peer that receives the node's reports, or only what it asks for by C-MOVE."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    auto_export: bool = True
    """Queue reports for this peer (which ones: ``exports``). ``false``: the peer is only
    a C-MOVE destination (a workstation or viewer that retrieves what it asks for)."""
    exports: DestinationExports = DestinationExports.FINALS_ONLY
    """``"finals_only"`` (the default) or ``"drafts_and_finals"``. Configurations written
    before this setting existed sent drafts to every destination: such an entry now
    receives signed reports only until it says ``exports = "drafts_and_finals"`` (the
    start-up summary names the entries that rely on the default)."""
    storage_commitment: bool = False
    """Ask the peer to commit to keeping what it was sent (Storage Commitment Push Model,
    PS3.4 Annex J): an export counts as delivered only once the peer reported the
    commitment, on the export's association or on one it opens to the node's listener."""

    @field_validator("ae_title")
    @classmethod
    def _check_peer_ae(cls, value: str) -> str:
        return check_ae_title(value)

    @property
    def exports_by_default(self) -> bool:
        """Whether ``exports`` was left unset (finals only, by default)."""
        return "exports" not in self.model_fields_set

    def receives_drafts(self) -> bool:
        """Whether drafts are exported to this destination automatically."""
        return self.auto_export and self.exports is DestinationExports.DRAFTS_AND_FINALS


class ExportSettings(Section):
    """Delivery of reports (and optionally their images) to the ``destinations``.

    A failed delivery is tried again after ``base_delay_seconds``, the delay
    growing by ``backoff_factor`` up to ``max_delay_seconds``; an export still
    undelivered ``max_age_seconds`` after it was queued becomes FAILED.
    """

    calling_ae: str | None = None
    """The AE title the node calls with; ``dicom.ae_title`` when unset."""
    period_seconds: float = Field(5.0, gt=0)
    base_delay_seconds: float = Field(30.0, ge=0)
    backoff_factor: float = Field(2.0, ge=1)
    max_delay_seconds: float = Field(900.0, ge=0)
    max_age_seconds: float = Field(86400.0, ge=0)
    timeout_seconds: float = Field(30.0, gt=0)
    """Connection, association, response and network timeout of one send."""
    claim_seconds: float = Field(300.0, gt=0)
    """How long a claimed export is left to its sender before another pass may
    take it (a sender that died mid-send); must exceed the longest send."""
    batch_size: int = Field(20, ge=1)
    """Exports claimed by one pass."""
    include_images: bool = False
    """Send the study's instances before the report's SR, in the same association."""
    commitment_timeout_seconds: float = Field(600.0, gt=0)
    """How long a destination with ``storage_commitment`` has to report on a commitment
    request; without a report by then the object is sent and committed again."""
    commitment_wait_seconds: float = Field(2.0, ge=0)
    """How long the commitment request's association stays open for the report to come
    on it; later reports come on an association the destination opens to the node."""
    commitment_max_attempts: int = Field(5, ge=1)
    """Attempts after which a refused or unreported commitment makes the export FAILED."""

    @field_validator("calling_ae")
    @classmethod
    def _check_calling_ae(cls, value: str | None) -> str | None:
        return None if value is None else check_ae_title(value)
