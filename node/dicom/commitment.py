"""Storage Commitment Push Model (PS3.4 Annex J), the node being the SCU.

After an export's C-STORE, :func:`request_commitment` asks the destination to commit to
keeping what it was sent: an N-ACTION (Action Type 1) on the well-known SOP Instance
1.2.840.10008.1.20.1.1, naming a Transaction UID and every instance in the Referenced SOP
Sequence. The destination answers with an N-EVENT-REPORT (Event Type 1: every instance
committed; 2: failures present), either

* on the same association, while it stays open (``wait_seconds``), or
* on an association the destination opens to the node's listener later. It proposes the
  SCP role for Storage Commitment (SCP/SCU Role Selection, PS3.7 D.3.3.4) and the node
  accepts it, taking the SCU role: :class:`CommitmentReportListener` adds that context to
  the listener and answers each N-EVENT-REPORT.

Both paths hand the parsed :class:`CommitmentReport` to the same sink, whose status is
the N-EVENT-REPORT response. What a report does to the node's records is
:mod:`node.exports.commitment`'s business. Log messages name AE titles, Transaction
UIDs and statuses, never patient data.
"""

from __future__ import annotations

import enum
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from node.config import Destination
from node.dicom.export import DestinationRefused, DestinationUnreachable
from node.dicom.requesting import AnswerWatch
from node.logs import log_event

logger = logging.getLogger(__name__)

#: The Storage Commitment Push Model SOP Class.
STORAGE_COMMITMENT_SOP_CLASS = UID(str(StorageCommitmentPushModel))
#: The well-known SOP Instance every N-ACTION and N-EVENT-REPORT of the class addresses.
STORAGE_COMMITMENT_SOP_INSTANCE = UID("1.2.840.10008.1.20.1.1")
#: Action Type ID of "Request Storage Commitment".
REQUEST_STORAGE_COMMITMENT = 1

_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class CommitmentEvent(enum.IntEnum):
    """The Event Type ID of a storage commitment N-EVENT-REPORT."""

    ALL_COMMITTED = 1
    """Storage Commitment Request Successful."""
    FAILURES_PRESENT = 2
    """Storage Commitment Request Complete - Failures Exist."""


class ReportStatus(enum.IntEnum):
    """What the node answers an N-EVENT-REPORT with (PS3.7 Annex C)."""

    SUCCESS = 0x0000
    """The report was recorded (or was already)."""
    PROCESSING_FAILURE = 0x0110
    """The node could not record it now (its database failed); the peer may send again."""
    NO_SUCH_EVENT_TYPE = 0x0113
    """An Event Type ID other than 1 or 2."""
    INVALID_ARGUMENT_VALUE = 0x0115
    """No Transaction UID, an unknown one, or one of another destination's requests."""
    NOT_AUTHORIZED = 0x0124
    """The calling AE is not a destination the node asks for storage commitment."""
    MISSING_ATTRIBUTE = 0x0120
    """The event information is missing or unreadable."""


@dataclass(frozen=True)
class CommitmentReference:
    """One instance of a commitment request or report."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class CommitmentFailure:
    """An instance the destination did not commit to, with its Failure Reason."""

    reference: CommitmentReference
    reason: int | None


@dataclass(frozen=True)
class CommitmentReport:
    """A parsed storage commitment N-EVENT-REPORT."""

    transaction_uid: str
    event: CommitmentEvent
    committed: tuple[CommitmentReference, ...]
    """Referenced SOP Sequence: the instances the destination keeps."""
    failed: tuple[CommitmentFailure, ...]
    """Failed SOP Sequence: the instances it does not."""
    calling_ae: str
    """The AE title the report came from."""

    def verdict(self, requested: Sequence[CommitmentReference]) -> str | None:
        """Why the report does not commit every ``requested`` instance (``None`` if it does).

        An instance counts as committed only when the Referenced SOP Sequence names it with
        its SOP Class and the Failed SOP Sequence does not; the Event Type alone is not
        trusted.
        """
        failed = {f.reference.sop_instance_uid: f for f in self.failed}
        committed = {r.sop_instance_uid: r for r in self.committed}
        problems: list[str] = []
        for reference in requested:
            failure = failed.get(reference.sop_instance_uid)
            if failure is not None:
                reason = (f"failure reason 0x{failure.reason:04X} {failure_reason(failure.reason)}"
                          if failure.reason is not None else "no failure reason")
                problems.append(f"{reference.sop_instance_uid}: {reason}")
            elif committed.get(reference.sop_instance_uid) != reference:
                problems.append(f"{reference.sop_instance_uid}: not reported as committed")
        if not problems:
            return None
        shown = "; ".join(problems[:3]) + (f"; {len(problems) - 3} more" if len(problems) > 3
                                           else "")
        return (f"{self.calling_ae} refused storage commitment of {len(problems)} of "
                f"{len(requested)} instance(s): {shown}")


#: Failure Reason (0008,1197) meanings (PS3.3 C.14.1.1).
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class / instance conflict",
    0x0131: "duplicate transaction UID",
}


def failure_reason(code: int) -> str:
    """The meaning of a Failure Reason code."""
    return FAILURE_REASONS.get(code, "unknown reason")


class MalformedReport(ValueError):
    """An N-EVENT-REPORT whose event information cannot be read as a commitment report.

    Parameters
    ----------
    message
        What is wrong (no patient data).
    status
        The status to answer with.
    """

    def __init__(self, message: str, status: ReportStatus) -> None:
        super().__init__(message)
        self.status = status


def _references(items: Any) -> tuple[CommitmentReference, ...]:
    return tuple(CommitmentReference(str(item.get("ReferencedSOPClassUID", "")),
                                     str(item.get("ReferencedSOPInstanceUID", "")))
                 for item in items or [])


def parse_report(event_type: int | None, information: Dataset | None,
                 calling_ae: str) -> CommitmentReport:
    """Read a storage commitment N-EVENT-REPORT.

    Parameters
    ----------
    event_type
        The Event Type ID.
    information
        The decoded Event Information.
    calling_ae
        Who sent it.

    Raises
    ------
    MalformedReport
        An unknown event type, missing event information or no Transaction UID.
    """
    try:
        event = CommitmentEvent(int(event_type or 0))
    except ValueError:
        raise MalformedReport(f"event type {event_type} is not a storage commitment event",
                              ReportStatus.NO_SUCH_EVENT_TYPE) from None
    if information is None:
        raise MalformedReport("no event information", ReportStatus.MISSING_ATTRIBUTE)
    transaction_uid = str(information.get("TransactionUID", "") or "").strip()
    if not transaction_uid:
        raise MalformedReport("no Transaction UID", ReportStatus.INVALID_ARGUMENT_VALUE)
    failed = tuple(
        CommitmentFailure(reference, int(item.FailureReason) if "FailureReason" in item
                          else None)
        for reference, item in zip(_references(information.get("FailedSOPSequence")),
                                   information.get("FailedSOPSequence") or [], strict=True))
    return CommitmentReport(transaction_uid, event,
                            _references(information.get("ReferencedSOPSequence")), failed,
                            calling_ae)


ReportSink = Callable[[CommitmentReport], int]
"""Records a report and returns the N-EVENT-REPORT response status."""


def answer_report(event: Any, calling_ae: str, sink: ReportSink) -> tuple[int, None]:
    """Answer one N-EVENT-REPORT: parse it, hand it to ``sink``, return its status.

    Never raises into pynetdicom: a report that cannot be read or recorded gets a
    failure status (the peer keeps it and may send it again).
    """
    request = event.request
    if str(request.AffectedSOPClassUID) != STORAGE_COMMITMENT_SOP_CLASS:
        return int(ReportStatus.INVALID_ARGUMENT_VALUE), None
    try:
        information = event.event_information
    except Exception:  # an undecodable data set
        information = None
    try:
        report = parse_report(request.EventTypeID, information, calling_ae)
    except MalformedReport as exc:
        log_event(logger, logging.WARNING, "commitment_report_malformed",
                  calling_ae=calling_ae, problem=str(exc), status=f"0x{exc.status:04X}")
        return int(exc.status), None
    try:
        return int(sink(report)), None
    except Exception as exc:
        log_event(logger, logging.ERROR, "commitment_report_not_recorded",
                  calling_ae=calling_ae, transaction_uid=report.transaction_uid,
                  error=type(exc).__name__)
        return int(ReportStatus.PROCESSING_FAILURE), None


def request_commitment(
    destination: Destination,
    transaction_uid: str,
    references: Sequence[CommitmentReference],
    *,
    calling_ae: str,
    timeout: float,
    wait_seconds: float,
    on_report: ReportSink,
    ssl_context: ssl.SSLContext | None = None,
) -> bool:
    """Send the commitment request; wait up to ``wait_seconds`` for the report on it.

    Parameters
    ----------
    destination
        The peer (its Storage Commitment SCP).
    transaction_uid
        Identifies this request in the peer's report; recorded before the call.
    references
        The instances the peer is asked to commit to.
    calling_ae, timeout, ssl_context
        As for :func:`~node.dicom.export.send_instances`.
    wait_seconds
        How long the association stays open after the N-ACTION response for an
        N-EVENT-REPORT on it; 0 releases it at once.
    on_report
        Records a report that arrives on this association (its status is the answer).

    Returns
    -------
    bool
        Whether the report of this transaction arrived on this association.

    Raises
    ------
    DestinationUnreachable
        No association, or it was lost before the N-ACTION response.
    DestinationRefused
        The association or the Storage Commitment context was rejected, or the N-ACTION
        was answered with a failure status.
    """
    peer = f"{destination.ae_title} at {destination.host}:{destination.port}"
    arrived = threading.Event()
    answered = threading.Event()

    def _on_event_report(event: Any) -> tuple[int, None]:
        status, body = answer_report(event, destination.ae_title, on_report)
        try:
            reported = str(event.event_information.get("TransactionUID", ""))
        except Exception:  # undecodable: answered above with a failure status
            reported = ""
        if reported == transaction_uid and status == ReportStatus.SUCCESS:
            arrived.set()
        return status, body

    def _on_sent(event: Any) -> None:
        # The report's response is on its way: only now may the association be released
        # (releasing while the handler runs would send A-RELEASE-RQ before the response).
        if arrived.is_set() and type(event.message).__name__ == "N_EVENT_REPORT_RSP":
            answered.set()

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(STORAGE_COMMITMENT_SOP_CLASS, _SYNTAXES)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    tls_args = None
    if destination.tls:
        tls_args = (ssl_context or ssl.create_default_context(ssl.Purpose.SERVER_AUTH),
                    destination.host)
    watch = AnswerWatch()
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         tls_args=tls_args,
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, _on_event_report),
                                       (evt.EVT_DIMSE_SENT, _on_sent), *watch.handlers])
    if not assoc.is_established:
        if watch.rejection(assoc) is not None:
            raise DestinationRefused(f"association for storage commitment rejected by {peer}")
        raise DestinationUnreachable(f"no association with {peer} for storage commitment")
    try:
        if not assoc.accepted_contexts:
            raise DestinationRefused(
                f"{peer} does not accept the Storage Commitment Push Model SOP Class")
        information = Dataset()
        information.TransactionUID = transaction_uid
        information.ReferencedSOPSequence = [_reference_item(r) for r in references]
        status, _reply = assoc.send_n_action(
            information, REQUEST_STORAGE_COMMITMENT, STORAGE_COMMITMENT_SOP_CLASS,
            STORAGE_COMMITMENT_SOP_INSTANCE)
        if "Status" not in status:
            raise DestinationUnreachable(f"no N-ACTION response from {peer}")
        if int(status.Status) != 0x0000:
            raise DestinationRefused(
                f"{peer} refused the storage commitment request: status "
                f"0x{int(status.Status):04X}", int(status.Status))
        deadline = time.monotonic() + wait_seconds
        while (not arrived.is_set() and assoc.is_established
               and time.monotonic() < deadline):
            arrived.wait(min(0.05, max(deadline - time.monotonic(), 0)))
        if arrived.is_set():
            answered.wait(timeout)
        return arrived.is_set()
    finally:
        if assoc.is_established:
            _release_within(assoc, timeout, peer)


def _release_within(assoc: Any, seconds: float, peer: str) -> None:
    """Release ``assoc``, aborting it when the release has not completed in ``seconds``.

    pynetdicom's release waits, without a deadline, for its reactor to pause; an
    association whose peer also sends requests must not be able to hold the export loop.
    """
    releasing = threading.Thread(target=assoc.release, name="commitment-release",
                                 daemon=True)
    releasing.start()
    releasing.join(seconds)
    if releasing.is_alive():
        log_event(logger, logging.WARNING, "commitment_release_aborted", peer=peer)
        assoc.abort()
        releasing.join(seconds)


def _reference_item(reference: CommitmentReference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = reference.sop_class_uid
    item.ReferencedSOPInstanceUID = reference.sop_instance_uid
    return item


class CommitmentReportListener:
    """Storage Commitment on the node's listener: reports on associations peers open.

    The node is the SCU of the class; a destination sending a report on its own
    association proposes the SCP role for itself and the listener accepts that (the node
    taking the SCU role). An N-ACTION sent to the node is answered "unrecognised
    operation": the node commits to nothing for others.

    Parameters
    ----------
    sink
        Records each report and returns the response status.
    """

    def __init__(self, sink: ReportSink) -> None:
        self.sink = sink

    def add_contexts(self, ae: AE) -> None:
        """Accept Storage Commitment with the requestor as SCP and the node as SCU."""
        ae.add_supported_context(STORAGE_COMMITMENT_SOP_CLASS, _SYNTAXES,
                                 scu_role=False, scp_role=True)

    def handlers(self) -> list[tuple[Any, Callable[[Any], Any]]]:
        """The event handlers to bind on the listener."""
        return [(evt.EVT_N_EVENT_REPORT, self._on_event_report),
                (evt.EVT_N_ACTION, self._on_action)]

    def _on_event_report(self, event: Any) -> tuple[int, None]:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        return answer_report(event, calling_ae, self.sink)

    @staticmethod
    def _on_action(event: Any) -> tuple[int, None]:
        log_event(logger, logging.WARNING, "commitment_request_refused",
                  calling_ae=str(event.assoc.requestor.ae_title).strip())
        return 0x0211, None


__all__ = [
    "STORAGE_COMMITMENT_SOP_CLASS",
    "STORAGE_COMMITMENT_SOP_INSTANCE",
    "CommitmentEvent",
    "CommitmentFailure",
    "CommitmentReference",
    "CommitmentReport",
    "CommitmentReportListener",
    "MalformedReport",
    "ReportSink",
    "ReportStatus",
    "answer_report",
    "failure_reason",
    "parse_report",
    "request_commitment",
]
