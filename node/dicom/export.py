"""Sending instances to a DICOM peer: the C-STORE SCU side of the node.

:func:`send_instances` opens one association to a :class:`~node.config.Destination`,
sends each instance and releases. The outcome is either a :class:`SendResult` per
instance (Success or Warning) or one of two exceptions:

* :class:`DestinationUnreachable` — no TCP connection, no answer, an abort or a
  timeout: nothing says the peer refused, so trying again later may succeed;
* :class:`DestinationRefused` — the peer answered no: association rejected, no
  acceptable presentation context, or a C-STORE failure status (kept in ``status``).

Presentation contexts: for each SOP class an uncompressed little-endian context
(Explicit and Implicit VR) is always proposed, plus one context for every other
transfer syntax the files are in (deflate, big endian, JPEG, JPEG 2000…). A file
goes in its own transfer syntax when that is accepted; an uncompressed file is
converted between Explicit and Implicit VR by pynetdicom; an encapsulated file is
decompressed when the peer accepts only uncompressed data (a lossy file keeps its
Lossy Image Compression attributes).

Messages name AE titles, addresses, SOP classes and statuses, never patient data.
"""

from __future__ import annotations

import copy
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from node.config import Destination, TlsSettings
from node.dicom.requesting import AnswerWatch

#: The association carries at most this many presentation contexts (PS3.8 9.3.2.2).
MAX_PRESENTATION_CONTEXTS = 128

#: Proposed for every SOP class: what every Storage SCP must accept.
UNCOMPRESSED_LITTLE_ENDIAN: tuple[UID, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

Sendable = Dataset | str | os.PathLike[str]
"""A dataset (with ``file_meta.TransferSyntaxUID``) or the path of a Part 10 file."""


class ExportError(Exception):
    """An instance could not be delivered to a destination."""


class DestinationUnreachable(ExportError):
    """No association, or it was lost: connection refused, timeout, abort, TLS failure."""


class DestinationRefused(ExportError):
    """The destination answered but refused.

    Parameters
    ----------
    message
        What was refused and by whom (AE titles and codes only).
    status
        The C-STORE failure status; ``None`` when the association itself was
        rejected or no presentation context was accepted.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SendResult:
    """One instance the destination accepted (Success or a Warning status)."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    """The transfer syntax the instance was sent in."""
    status: int
    error_comment: str | None = None
    """(0000,0902) Error Comment of a warning response, if any."""

    @property
    def is_warning(self) -> bool:
        """Whether the peer stored the instance with a warning (e.g. 0xB000 coercion)."""
        return self.status != 0x0000


class InstanceSender(Protocol):
    """The signature of :func:`send_instances` (a seam for tests and wrappers)."""

    def __call__(
        self,
        destination: Destination,
        items: Sequence[Sendable],
        *,
        calling_ae: str,
        timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> list[SendResult]: ...


@dataclass
class _Outgoing:
    """An instance to send, described from its file meta before the association."""

    source: Sendable
    sop_class_uid: UID
    sop_instance_uid: UID
    transfer_syntax_uid: UID


def build_client_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    """Build the TLS context for outgoing associations (TLS 1.2 or newer).

    The peer's certificate is verified against ``tls.ca_file`` (the system's
    trust store when unset) and its host name checked. The node's own
    certificate and key, when configured, are offered for mutual TLS.

    Parameters
    ----------
    tls
        The node's TLS settings (``[dicom.tls]``).

    Returns
    -------
    ssl.SSLContext
        A client-side context.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca_file is not None:
        context.load_verify_locations(cafile=tls.ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(certfile=tls.cert_file, keyfile=tls.key_file)
    return context


def send_instance(
    destination: Destination,
    dataset_or_path: Sendable,
    *,
    calling_ae: str,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> SendResult:
    """Send one instance to ``destination`` in its own association.

    Parameters
    ----------
    destination
        The peer: AE title, host, port and whether it speaks TLS.
    dataset_or_path
        A dataset with ``file_meta.TransferSyntaxUID`` set, or a Part 10 file.
    calling_ae
        The node's AE title as the peer should see it.
    timeout
        Seconds for the TCP connection, the association negotiation, each
        DIMSE response and network inactivity.
    ssl_context
        Client TLS context used when ``destination.tls`` is set (see
        :func:`build_client_ssl_context`); a default one trusting the system's
        certificate authorities when omitted.

    Returns
    -------
    SendResult
        The peer's Success or Warning status.

    Raises
    ------
    DestinationUnreachable
        No association could be made or it was lost before the response.
    DestinationRefused
        The association was rejected, no presentation context fitted, or the
        C-STORE response was a failure status.
    ValueError
        The dataset or file lacks its SOP class, instance or transfer syntax.
    """
    results = send_instances(
        destination, [dataset_or_path], calling_ae=calling_ae, timeout=timeout,
        ssl_context=ssl_context,
    )
    return results[0]


def send_instances(
    destination: Destination,
    items: Sequence[Sendable],
    *,
    calling_ae: str,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> list[SendResult]:
    """Send ``items`` in order over one association; stop at the first failure.

    Parameters are those of :func:`send_instance`, with a sequence of datasets
    or paths. Instances sent before a failure stay delivered; sending them again
    is harmless (a Storage SCP keeps one copy per SOP Instance UID).

    Returns
    -------
    list of SendResult
        One per item, in order.

    Raises
    ------
    DestinationUnreachable, DestinationRefused, ValueError
        As for :func:`send_instance`.
    """
    if not items:
        return []
    outgoing = [_describe(item) for item in items]
    contexts = _proposed_contexts(outgoing)
    assoc, watch = _associate(destination, contexts, calling_ae, timeout, ssl_context)
    peer = _peer_name(destination)
    if not assoc.is_established:
        raise _association_failure(assoc, peer, watch)
    results: list[SendResult] = []
    try:
        for message_id, item in enumerate(outgoing, start=1):
            results.append(_store(assoc, item, peer, message_id))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


# -- preparing the association --------------------------------------------------------------


def _describe(item: Sendable) -> _Outgoing:
    if isinstance(item, Dataset):
        meta = getattr(item, "file_meta", None)
        syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
        sop_class = item.get("SOPClassUID")
        sop_instance = item.get("SOPInstanceUID")
    else:
        meta = read_file_meta_info(item)
        syntax = meta.get("TransferSyntaxUID")
        sop_class = meta.get("MediaStorageSOPClassUID")
        sop_instance = meta.get("MediaStorageSOPInstanceUID")
    if not syntax or not sop_class or not sop_instance:
        raise ValueError(
            "an instance to send needs its SOP Class UID, SOP Instance UID and "
            "(0002,0010) Transfer Syntax UID"
        )
    return _Outgoing(item, UID(sop_class), UID(sop_instance), UID(syntax))


def _proposed_contexts(outgoing: Sequence[_Outgoing]) -> list[PresentationContext]:
    wanted: dict[tuple[str, tuple[UID, ...]], None] = {}
    for item in outgoing:
        wanted[(item.sop_class_uid, UNCOMPRESSED_LITTLE_ENDIAN)] = None
        if item.transfer_syntax_uid not in UNCOMPRESSED_LITTLE_ENDIAN:
            wanted[(item.sop_class_uid, (item.transfer_syntax_uid,))] = None
    if len(wanted) > MAX_PRESENTATION_CONTEXTS:
        raise ValueError(
            f"{len(wanted)} SOP class / transfer syntax combinations exceed the "
            f"{MAX_PRESENTATION_CONTEXTS} presentation contexts of one association"
        )
    contexts = []
    for sop_class, syntaxes in wanted:
        context = PresentationContext()
        context.abstract_syntax = UID(sop_class)
        context.transfer_syntax = list(syntaxes)
        contexts.append(context)
    return contexts


def _associate(
    destination: Destination,
    contexts: list[PresentationContext],
    calling_ae: str,
    timeout: float,
    ssl_context: ssl.SSLContext | None,
) -> tuple[Association, AnswerWatch]:
    """Request the association; the watch says whether it connected and any rejection."""
    ae = AE(ae_title=calling_ae)
    ae.requested_contexts = contexts
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.maximum_pdu_size = 0
    tls_args: tuple[ssl.SSLContext, str] | None = None
    if destination.tls:
        context = ssl_context or ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        tls_args = (context, destination.host)
    watch = AnswerWatch()
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        tls_args=tls_args,
        evt_handlers=watch.handlers,
    )
    return assoc, watch


def _peer_name(destination: Destination) -> str:
    scheme = " (TLS)" if destination.tls else ""
    return f"{destination.ae_title} at {destination.host}:{destination.port}{scheme}"


def _association_failure(assoc: Association, peer: str, watch: AnswerWatch) -> ExportError:
    rejection = watch.rejection(assoc)
    if rejection is not None:
        return DestinationRefused(
            f"association rejected by {peer}: {rejection.result_str}, "
            f"{rejection.source_str}: {rejection.reason_str}"
        )
    answer = assoc.acceptor.primitive
    if answer is not None and answer.result == 0x00:
        refused = sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts})
        names = ", ".join(UID(uid).name for uid in refused) or "the proposed SOP classes"
        return DestinationRefused(f"{peer} accepted no presentation context for {names}")
    if not watch.opened:
        return DestinationUnreachable(f"cannot connect to {peer}")
    return DestinationUnreachable(f"no association with {peer}: aborted or timed out")


# -- sending one instance ---------------------------------------------------------------


def _accepted_syntaxes(assoc: Association, sop_class: UID) -> list[UID]:
    return [
        UID(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class and cx.transfer_syntax
    ]


def _load(item: _Outgoing) -> Dataset:
    if isinstance(item.source, Dataset):
        return item.source
    return dcmread(Path(item.source))


def _prepare(assoc: Association, item: _Outgoing, peer: str) -> tuple[Dataset, UID]:
    """Return the dataset to send and the transfer syntax it will travel in."""
    accepted = _accepted_syntaxes(assoc, item.sop_class_uid)
    syntax = item.transfer_syntax_uid
    if syntax in accepted:
        return _load(item), syntax
    uncompressed = [ts for ts in accepted if ts in UNCOMPRESSED_LITTLE_ENDIAN]
    if uncompressed and syntax.is_little_endian and not syntax.is_compressed:
        return _load(item), uncompressed[0]  # pynetdicom converts Explicit/Implicit/deflate
    if uncompressed and syntax.is_compressed:
        dataset = _load(item)
        if dataset is item.source:
            dataset = copy.deepcopy(dataset)  # leave the caller's dataset untouched
        try:
            dataset.decompress(generate_instance_uid=False)
        except Exception as exc:  # no decoder, corrupt stream: a local problem
            raise DestinationRefused(
                f"{peer} accepts {item.sop_class_uid.name} only uncompressed and "
                f"{syntax.name} could not be decompressed ({type(exc).__name__})"
            ) from exc
        return dataset, uncompressed[0]
    raise DestinationRefused(
        f"{peer} accepted no presentation context for {item.sop_class_uid.name} "
        f"in {syntax.name}"
    )


def _store(assoc: Association, item: _Outgoing, peer: str, message_id: int) -> SendResult:
    dataset, syntax = _prepare(assoc, item, peer)
    response = assoc.send_c_store(dataset, msg_id=message_id)
    if "Status" not in response:
        how = "association aborted" if assoc.is_aborted else "connection closed or timed out"
        raise DestinationUnreachable(f"no C-STORE response from {peer} ({how})")
    status = int(response.Status)
    comment = str(response.get("ErrorComment", "")) or None
    category = code_to_category(status)
    if category in ("Success", "Warning"):
        return SendResult(
            str(item.sop_instance_uid), str(item.sop_class_uid), str(syntax), status, comment
        )
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, (category, "unknown status"))[1]
    detail = f" ({comment})" if comment else ""
    raise DestinationRefused(
        f"{peer} refused C-STORE of {item.sop_class_uid.name}: "
        f"status 0x{status:04X} {meaning}{detail}",
        status,
    )


__all__ = [
    "DestinationRefused",
    "DestinationUnreachable",
    "ExportError",
    "InstanceSender",
    "SendResult",
    "Sendable",
    "build_client_ssl_context",
    "send_instance",
    "send_instances",
]
