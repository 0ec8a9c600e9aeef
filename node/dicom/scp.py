"""The DICOM listener: C-ECHO, C-STORE for every storage SOP class, and Query/Retrieve.

The handlers speak DICOM statuses; they never raise into pynetdicom (which
would answer 0xC211). Association events are logged with AE titles and peer
addresses only.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from typing import Any, cast

from pydicom import uid as dicom_uid
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.utils import make_target

from node.config import DicomSettings, TlsSettings
from node.dicom.access import AccessPolicy, Permission
from node.dicom.admission import GuardedAssociationServer, SharedPortAssociationServer
from node.dicom.buffers import mapped_file
from node.dicom.commitment import CommitmentReportListener
from node.dicom.ingest import InstanceIngestor, ReceivedInstance
from node.dicom.negotiation_memo import NegotiationMemo
from node.dicom.qr import FIND_SOP_CLASSES, RETRIEVE_SOP_CLASSES, QueryRetrieveService
from node.dicom.refusals import RefusalRecorder
from node.dicom.shared_admission import SharedAdmissionCounts
from node.dicom.statuses import StoreStatus
from node.dicom.upstream_workarounds import (
    remember_set_uids,
    remember_valid_uids,
    share_contexts,
    skip_unlogged_handlers,
    spool_received_datasets,
    spooled_digest,
    spooled_path,
)
from node.logs import log_event

logger = logging.getLogger(__name__)

#: Transfer syntaxes accepted for storage, native first: the received bytes are
#: stored exactly as sent, and the drafting pipeline decodes each of these.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    dicom_uid.ExplicitVRLittleEndian,
    dicom_uid.ImplicitVRLittleEndian,
    dicom_uid.DeflatedExplicitVRLittleEndian,
    dicom_uid.ExplicitVRBigEndian,
    dicom_uid.JPEGBaseline8Bit,
    dicom_uid.JPEGExtended12Bit,
    dicom_uid.JPEGLossless,
    dicom_uid.JPEGLosslessSV1,
    dicom_uid.JPEGLSLossless,
    dicom_uid.JPEGLSNearLossless,
    dicom_uid.JPEG2000Lossless,
    dicom_uid.JPEG2000,
    dicom_uid.HTJ2KLossless,
    dicom_uid.HTJ2KLosslessRPCL,
    dicom_uid.HTJ2K,
    dicom_uid.RLELossless,
)


class _DeferredHandshakeContext(ssl.SSLContext):
    """A server TLS context whose handshake runs in the association's own thread.

    pynetdicom wraps every accepted socket in its single accept loop; with the
    default handshake-on-wrap, one peer that connects and stays silent stalls
    that loop, and with it every other association. Here the handshake happens
    on the first read, in the thread serving that peer, and the socket gets a
    timeout so that a silent peer is eventually dropped.
    """

    peer_timeout: float | None = None

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        sock.settimeout(self.peer_timeout)
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


def build_ssl_context(tls: TlsSettings, *, peer_timeout: float | None = None) -> ssl.SSLContext:
    """Build the server-side TLS context (TLS 1.2 or newer).

    Parameters
    ----------
    tls
        Certificate, key, CA and client-certificate policy.
    peer_timeout
        Seconds a peer may stay silent, the TLS handshake included, before its
        connection is dropped; ``None`` waits for ever.

    Raises
    ------
    ValueError
        If TLS is enabled without a certificate and key.
    """
    if tls.cert_file is None or tls.key_file is None:
        raise ValueError("dicom.tls needs cert_file and key_file")
    context = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.peer_timeout = peer_timeout
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=tls.cert_file, keyfile=tls.key_file)
    if tls.ca_file is not None:
        context.load_verify_locations(cafile=tls.ca_file)
    if tls.require_client_cert:
        if tls.ca_file is None:
            raise ValueError("dicom.tls.require_client_cert needs ca_file")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class DicomListener:
    """A pynetdicom SCP bound to the ingest service.

    Parameters
    ----------
    settings
        AE title, address, access policy and timeouts.
    ingestor
        Receives every C-STORE.
    query_retrieve
        Serves C-FIND, C-GET and C-MOVE when given. Storage contexts then also accept
        the SCP/SCU role selection a C-GET requestor proposes (it acts as their SCP).
    commitment
        Receives storage commitment reports that destinations send on associations of
        their own (the node in the SCU role of Storage Commitment), when given.
    shared_admission
        The admission counts of every listener process of the node, when there are
        several (``[dicom] listener_processes``); the listening socket then shares its
        port with theirs (``SO_REUSEPORT``).
    """

    def __init__(
        self,
        settings: DicomSettings,
        ingestor: InstanceIngestor,
        query_retrieve: QueryRetrieveService | None = None,
        commitment: CommitmentReportListener | None = None,
        *,
        shared_admission: SharedAdmissionCounts | None = None,
    ) -> None:
        self.settings = settings
        self.shared_admission = shared_admission
        self.commitment = commitment
        self.ingestor = ingestor
        self.query_retrieve = query_retrieve
        self.policy = AccessPolicy(settings)
        if query_retrieve is not None:
            query_retrieve.policy = self.policy
        self.refusals = RefusalRecorder(ingestor.session_factory)
        self._server: GuardedAssociationServer | None = None
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_pdu_size = self.settings.max_pdu_size
        # Slots are counted by admission (node.dicom.admission), which frees them when a
        # connection ends; pynetdicom's own count includes threads still winding down.
        ae.maximum_associations = self.settings.max_associations + self.settings.max_pending
        ae.acse_timeout = self.settings.acse_timeout
        ae.dimse_timeout = self.settings.dimse_timeout
        ae.network_timeout = self.settings.network_timeout
        ae.require_called_aet = self.settings.require_called_ae
        if not self.policy.open:
            ae.require_calling_aet = [
                *self.settings.allowed_calling_aes, *(p.ae_title for p in self.settings.peers)]
        ae.connection_timeout = self.settings.acse_timeout  # C-MOVE's outgoing associations
        ae.add_supported_context(Verification)
        roles = {"scu_role": True, "scp_role": True} if self.query_retrieve else {}
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(
                context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES), **roles
            )
        if self.query_retrieve is not None:
            self.query_retrieve.add_contexts(ae)
        if self.commitment is not None:
            self.commitment.add_contexts(ae)
        return ae

    @property
    def port(self) -> int:
        """The bound TCP port (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("listener not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Start serving in background threads."""
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        if self.query_retrieve is not None:
            handlers.extend(self.query_retrieve.handlers())
        if self.commitment is not None:
            handlers.extend(self.commitment.handlers())
        context = (
            build_ssl_context(self.settings.tls, peer_timeout=self.settings.network_timeout)
            if self.settings.tls.enabled
            else None
        )
        skip_unlogged_handlers()
        remember_valid_uids()
        remember_set_uids()
        server = cast(
            GuardedAssociationServer,
            self.ae.make_server(
                (self.settings.bind_address, self.settings.port),
                evt_handlers=handlers,
                ssl_context=context,
                server_class=(GuardedAssociationServer if self.shared_admission is None
                              else SharedPortAssociationServer),
            ),
        )
        server.configure(self.settings, self.policy, self.refusals.association, {
            Permission.QUERY: frozenset(FIND_SOP_CLASSES),
            Permission.RETRIEVE: frozenset(RETRIEVE_SOP_CLASSES),
        }, self.shared_admission)
        share_contexts(server)
        server.negotiation_memo = NegotiationMemo()
        spool_received_datasets(server, self.ingestor.store.spool_folder())
        # As AE.start_server does: serve from a daemon thread, and register the
        # server with the AE, whose list server.shutdown() removes it from.
        threading.Thread(
            target=make_target(server.serve_forever), name="dicom-acceptor", daemon=True
        ).start()
        self.ae._servers.append(server)
        self._server = server
        process = {} if self.shared_admission is None else {
            "listener_process": self.shared_admission.row}
        log_event(
            logger,
            logging.INFO,
            "dicom_listening",
            ae_title=self.settings.ae_title,
            port=self.port,
            tls=context is not None,
            open_to_any_ae=self.policy.open,
            **process,
        )
        if self.policy.open and process.get("listener_process", 0) == 0:
            log_event(logger, logging.WARNING, "dicom_open_to_any_ae",
                      hint="name the accepted AEs in [[dicom.peers]]")

    def stop(self) -> None:
        """Stop accepting associations and close the open ones."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @property
    def associations_in_use(self) -> int:
        """Associations holding a slot now."""
        return 0 if self._server is None else self._server.admission.in_use

    def _on_store(self, event: Any) -> int:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        if not self.policy.allows(calling_ae, Permission.STORE):
            log_event(logger, logging.WARNING, "store_not_authorized", calling_ae=calling_ae)
            return int(StoreStatus.NOT_AUTHORIZED)
        with contextlib.ExitStack() as mapped:
            try:
                request = event.request
                spooled = spooled_path(event)
                # A spooled data set is read from its file's pages, never copied whole;
                # the map is released when this block ends, whatever the outcome.
                received = ReceivedInstance(
                    encoded=event.encoded_dataset() if spooled is None
                    else mapped.enter_context(mapped_file(spooled)),
                    requested_sop_class_uid=str(request.AffectedSOPClassUID),
                    requested_sop_instance_uid=str(request.AffectedSOPInstanceUID),
                    calling_ae=calling_ae,
                    spooled=spooled,
                    digest=spooled_digest(event),
                )
            except Exception:
                logger.exception("store_request_unreadable")
                return int(StoreStatus.CANNOT_UNDERSTAND)
            return int(self.ingestor.ingest(received).status)

    @staticmethod
    def _on_echo(event: Any) -> int:
        return 0x0000

    def _peer(self, event: Any) -> dict[str, Any]:
        requestor = event.assoc.requestor
        fields: dict[str, Any] = {
            "calling_ae": str(requestor.ae_title).strip(),
            "peer": f"{requestor.address}:{requestor.port}",
        }
        if self.shared_admission is not None:
            fields["listener_process"] = self.shared_admission.row
        return fields

    def _on_accepted(self, event: Any) -> None:
        log_event(logger, logging.INFO, "association_accepted", **self._peer(event))

    def _on_rejected(self, event: Any) -> None:
        log_event(logger, logging.WARNING, "association_rejected", **self._peer(event))

    def _on_aborted(self, event: Any) -> None:
        log_event(logger, logging.WARNING, "association_aborted", **self._peer(event))
