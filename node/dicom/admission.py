"""Admission of DICOM connections: deadlines, per-address and per-AE limits, slots.

pynetdicom starts an association thread for every accepted connection and counts
association slots by the threads alive, which end only after its ACSE timeout once a
peer aborts; it reads each PDU with blocking reads that a peer can keep alive one byte
at a time. Here, before pynetdicom sees a connection:

1. the connection waits in a *pending* state, limited per source address and in all,
   and must deliver its whole A-ASSOCIATE-RQ (TLS handshake included) within
   ``association_request_timeout`` seconds, or it is closed;
2. the Calling AE Title, source address and client certificate are checked against the
   :class:`~node.dicom.access.AccessPolicy` (refused with A-ASSOCIATE-RJ 1/1/3);
3. the association takes a slot, within ``max_associations`` in all and the per-address
   and per-AE limits (refused with A-ASSOCIATE-RJ 2/3/2, transient, local limit
   exceeded). Pending connections never hold slots, so connections that have not
   finished their request cannot crowd out identified peers.

Once admitted, every PDU must complete, or advance by :data:`PROGRESS_BYTES`, within
``pdu_progress_timeout`` seconds, or the connection is cut. A slot is freed the moment
the connection closes, however it ends.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.config import DicomSettings
from node.dicom.access import AccessPolicy, Permission
from node.dicom.negotiation_memo import NegotiationMemo
from node.dicom.shared_admission import SharedAdmissionCounts
from node.dicom.upstream_workarounds import IDLE_WAIT_SECONDS, DulWakeUp, wake_instead_of_polling

logger = logging.getLogger(__name__)

PROGRESS_BYTES = 64 * 1024
"""A PDU being received must advance by this many bytes per progress timeout."""
MAX_REQUEST_BYTES = 1 << 20
"""Largest A-ASSOCIATE-RQ read (a real one is a few kilobytes)."""
CLOSED_BEFORE_REQUEST = "connection closed before an association request"
_AE_TITLES = slice(10, 42)  # Called and Calling AE Title in an A-ASSOCIATE-RQ


@dataclass(frozen=True)
class Refusal:
    """A connection or association request the listener refused."""

    address: str
    reason: str
    calling_ae: str | None = None


RefusalSink = Callable[[Refusal], None]


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4)."""
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, result, source, reason)


ABORT_PDU = struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0x02, 0x02)
"""A-ABORT from the service provider, unexpected PDU."""
REJECT_NOT_ACCEPTED = associate_rj(0x01, 0x01, 0x03)
"""Permanent, service user, calling AE title not recognised."""
REJECT_BUSY = associate_rj(0x02, 0x03, 0x02)
"""Transient, service provider (presentation), local limit exceeded."""


@dataclass(eq=False)
class Slot:
    """One admitted association; released once, when its connection ends."""

    owner: AdmissionControl
    address: str
    calling_ae: str
    association: Association | None = None
    released: bool = False

    def release(self) -> None:
        """Free the slot (idempotent)."""
        self.owner.release(self)

    def is_dead(self) -> bool:
        thread = self.association
        return thread is not None and thread.ident is not None and not thread.is_alive()


@dataclass
class AdmissionControl:
    """Counts pending connections and admitted associations.

    With ``shared`` (several listener processes on one port) the counts of every
    listener process are checked together; this process still tracks its own slots, to
    free those whose association thread ended without closing its connection.
    """

    max_associations: int
    max_per_address: int
    max_per_ae: int
    max_pending: int
    max_pending_per_address: int
    shared: SharedAdmissionCounts | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: Counter[str] = field(default_factory=Counter)
    _slots: set[Slot] = field(default_factory=set)

    @classmethod
    def from_settings(cls, settings: DicomSettings,
                      shared: SharedAdmissionCounts | None = None) -> AdmissionControl:
        """Limits from the ``[dicom]`` section, counted with ``shared`` when given."""
        return cls(settings.max_associations, settings.max_associations_per_address,
                   settings.max_associations_per_ae, settings.max_pending,
                   settings.max_pending_per_address, shared)

    def open_pending(self, address: str) -> bool:
        """Count a new connection from ``address``; ``False`` when over a limit."""
        with self._lock:
            if self.shared is not None:
                return self.shared.open_pending(address, self.max_pending,
                                                self.max_pending_per_address)
            if (sum(self._pending.values()) >= self.max_pending
                    or self._pending[address] >= self.max_pending_per_address):
                return False
            self._pending[address] += 1
            return True

    def close_pending(self, address: str) -> None:
        """A pending connection has sent its request or gone."""
        with self._lock:
            if self.shared is not None:
                self.shared.close_pending(address)
                return
            self._pending[address] -= 1
            if self._pending[address] <= 0:
                del self._pending[address]

    def admit(self, address: str, calling_ae: str) -> Slot | None:
        """Take a slot for an association, or ``None`` when a limit is reached."""
        with self._lock:
            self._forget_dead()
            if self.shared is not None:
                if not self.shared.admit(address, calling_ae, self.max_associations,
                                         self.max_per_address, self.max_per_ae):
                    return None
            elif (len(self._slots) >= self.max_associations
                    or sum(s.address == address for s in self._slots) >= self.max_per_address
                    or sum(s.calling_ae == calling_ae for s in self._slots) >= self.max_per_ae):
                return None
            slot = Slot(self, address, calling_ae)
            self._slots.add(slot)
            return slot

    def release(self, slot: Slot) -> None:
        """Free ``slot``."""
        with self._lock:
            self._free(slot)

    def _free(self, slot: Slot) -> None:
        if slot.released:
            return
        slot.released = True
        self._slots.discard(slot)
        if self.shared is not None:
            self.shared.release(slot.address, slot.calling_ae)

    def _forget_dead(self) -> None:
        for slot in [s for s in self._slots if s.is_dead()]:
            self._free(slot)

    @property
    def in_use(self) -> int:
        """Associations holding a slot in this process now."""
        with self._lock:
            self._forget_dead()
            return len(self._slots)


def _cut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def read_first_pdu(sock: socket.socket, timeout: float) -> bytes | str:
    """Read one whole PDU within ``timeout`` seconds in all; if it does not come, why not.

    On a TLS connection a timer shuts the socket down at the deadline too, so that a
    handshake trickled one record at a time cannot outlast it. A plain connection needs
    no timer (each read waits at most until the deadline), which spares every
    association a thread.
    """
    deadline = time.monotonic() + timeout
    watchdog: threading.Timer | None = None
    if isinstance(sock, ssl.SSLSocket):
        watchdog = threading.Timer(timeout + 0.25, _cut, (sock,))
        watchdog.daemon = True
        watchdog.start()
    data = bytearray()
    needed = 6
    try:
        while len(data) < needed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "association request not completed in time"
            sock.settimeout(remaining)
            chunk = sock.recv(min(needed - len(data), 65536))
            if not chunk:
                return CLOSED_BEFORE_REQUEST
            data.extend(chunk)
            if needed == 6 and len(data) >= 6:
                length = struct.unpack(">L", data[2:6])[0]
                if length > MAX_REQUEST_BYTES:
                    return "first PDU too long"
                needed = 6 + length
    except ssl.SSLError:
        return "TLS handshake failed"
    except (OSError, ValueError):
        return ("association request not completed in time"
                if time.monotonic() >= deadline else "connection failed")
    finally:
        if watchdog is not None:
            watchdog.cancel()
    return bytes(data)


def _certificate_name(sock: socket.socket) -> str | None:
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        certificate = sock.getpeercert()
    except (ValueError, OSError):
        return None
    subject: Any = (certificate or {}).get("subject", ())
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class GuardedAssociationSocket(AssociationSocket):
    """pynetdicom's socket wrapper, with the admitted request replayed and a progress
    deadline on every read.

    The admission step has already read the A-ASSOCIATE-RQ; pynetdicom reads it from
    here as if it came from the network.
    """

    _prefix: bytearray
    _slot: Slot
    _progress_timeout: float
    _idle_timeout: float | None
    _wake_up: DulWakeUp

    def guard(self, prefix: bytes, slot: Slot, progress_timeout: float,
              idle_timeout: float | None, wake_up: DulWakeUp) -> None:
        """Set what this socket replays and enforces (it was built by pynetdicom), and
        the wake-up its reading thread waits on beside the connection."""
        self._wake_up = wake_up
        self._prefix = bytearray(prefix)
        self._slot = slot
        self._progress_timeout = progress_timeout
        self._idle_timeout = idle_timeout

    @property
    def ready(self) -> bool:
        """Data is waiting: replayed request bytes, or data on the connection.

        pynetdicom's reading thread polls this and sleeps a millisecond between polls
        (its own sleep is set to zero here): this waits in ``select`` on the connection
        and on the association's wake-up (:func:`~node.dicom.upstream_workarounds.
        wake_instead_of_polling`) for up to
        :data:`~node.dicom.upstream_workarounds.IDLE_WAIT_SECONDS`, so that the thread
        wakes as soon as data arrives or the association hands it work, and rarely
        otherwise; it does not wait while events or primitives are queued for it. Once
        the connection is closed it still waits (on the wake-up alone).
        """
        if self._prefix:
            return True
        sock = self.socket
        waiting: list[Any] = []
        if self._wake_up.open:
            waiting.append(self._wake_up)
        if sock is not None:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return True
            waiting.append(sock)
        dul = self.assoc.dul
        queued = not (dul.event_queue.empty() and dul.to_provider_queue.empty())
        if waiting:
            with contextlib.suppress(OSError, ValueError):
                select.select(waiting, [], [], 0 if queued else IDLE_WAIT_SECONDS)
            self._wake_up.drain()
        return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes``, cutting the connection when the peer stops making progress.

        Raises
        ------
        TimeoutError
            When the bytes did not come in time; pynetdicom treats it as a closed
            connection.
        """
        data = bytearray(self._prefix[:nr_bytes])
        del self._prefix[:nr_bytes]
        sock = self.socket
        assert sock is not None
        deadline = time.monotonic() + self._progress_timeout
        progress_mark = len(data)
        while len(data) < nr_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._end()
                raise TimeoutError("the peer stopped sending within a PDU")
            limit = remaining if self._idle_timeout is None else min(remaining,
                                                                     self._idle_timeout)
            try:
                sock.settimeout(limit)
                chunk = sock.recv(min(nr_bytes - len(data), 1 << 20))
            except OSError:
                self._end()
                raise
            if not chunk:
                self._slot.release()
                return data
            data.extend(chunk)
            if len(data) - progress_mark >= PROGRESS_BYTES:
                progress_mark = len(data)
                deadline = time.monotonic() + self._progress_timeout
        return data

    def waiting_now(self) -> bool:
        """Whether a read would find data at once: given-back bytes, or pynetdicom's own
        check of the connection (which does not wait)."""
        return bool(self._prefix) or bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]

    def replay(self, data: bytes | bytearray) -> None:
        """Have the next reads return ``data`` first (bytes read ahead and given back)."""
        self._prefix[:0] = data

    def _end(self) -> None:
        self._slot.release()
        if self.socket is not None:
            _cut(self.socket)

    def close(self) -> None:
        """Close the connection and free the slot."""
        self._slot.release()
        super().close()


class _AdmittedRequestHandler(RequestHandler):
    """Builds the association of an admitted connection."""

    server: GuardedAssociationServer

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        admitted = self.server.take_admitted(self.request)
        admitted.slot.association = assoc
        sock = assoc.dul.socket
        assert sock is not None
        sock.__class__ = GuardedAssociationSocket  # same object, with the guards added
        guarded: Any = sock
        wake_up = wake_instead_of_polling(assoc)
        guarded.guard(admitted.request, admitted.slot, self.server.settings.pdu_progress_timeout,
                      self.server.settings.network_timeout, wake_up)
        if self.server.negotiation_memo is not None:
            self.server.negotiation_memo.bind(assoc)
        forbidden = self.server.forbidden_sop_classes(admitted.slot.calling_ae)
        assoc.acceptor.supported_contexts = [
            cx for cx in assoc.acceptor.supported_contexts
            if cx.abstract_syntax not in forbidden
        ]
        return assoc


@dataclass(frozen=True)
class _Admitted:
    request: bytes
    slot: Slot


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with admission before each association.

    Configure with :meth:`configure` before serving.
    """

    settings: DicomSettings
    policy: AccessPolicy
    admission: AdmissionControl
    on_refused: RefusalSink
    restricted: dict[Permission, frozenset[str]]
    """SOP classes reserved to a permission (query and retrieve classes)."""
    negotiation_memo: NegotiationMemo | None = None
    """Where association requests are negotiated once (none: every time, as pynetdicom)."""

    def configure(self, settings: DicomSettings, policy: AccessPolicy,
                  on_refused: RefusalSink,
                  restricted: dict[Permission, frozenset[str]],
                  shared: SharedAdmissionCounts | None = None) -> None:
        """Set the rules; called once, before ``serve_forever``. With ``shared``, the
        limits count the associations of every listener process on the port."""
        self.settings = settings
        self.policy = policy
        self.admission = AdmissionControl.from_settings(settings, shared)
        self.on_refused = on_refused
        self.restricted = restricted
        self.RequestHandlerClass = _AdmittedRequestHandler
        self._admitted: dict[int, _Admitted] = {}
        self._admitted_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection (the TLS handshake, if any, runs later in its thread)."""
        client_socket, address = super().get_request()
        client_socket.settimeout(self.settings.association_request_timeout)
        return client_socket, address

    def take_admitted(self, request: Any) -> _Admitted:
        """The admission of ``request``, removed from the table."""
        with self._admitted_lock:
            return self._admitted.pop(id(request))

    def forbidden_sop_classes(self, calling_ae: str) -> frozenset[str]:
        """The SOP classes whose presentation contexts ``calling_ae`` may not use."""
        grant = self.policy.grant(calling_ae)
        held = frozenset() if grant is None else grant.permissions
        forbidden: set[str] = set()
        for permission, classes in self.restricted.items():
            if permission not in held:
                forbidden |= classes
        return frozenset(forbidden)

    def _refuse(self, sock: socket.socket, refusal: Refusal, answer: bytes | None) -> None:
        if answer is not None:
            # Answer, then let the peer close first (PS3.8 9.1.5): closing with its bytes
            # unread could reset the connection before it has read the answer.
            with contextlib.suppress(OSError):
                sock.settimeout(1.0)
                sock.sendall(answer)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass
        _cut(sock)
        self.shutdown_request(sock)
        self.on_refused(refusal)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Admit the connection, then hand it to pynetdicom (in the connection's thread)."""
        address = str(client_address[0])
        if not self.admission.open_pending(address):
            self._refuse(request, Refusal(address, "too many pending connections"), None)
            return
        try:
            first = read_first_pdu(request, self.settings.association_request_timeout)
        finally:
            self.admission.close_pending(address)
        if first == CLOSED_BEFORE_REQUEST:  # a port probe: nothing to refuse or record
            _cut(request)
            self.shutdown_request(request)
            return
        if isinstance(first, str):
            self._refuse(request, Refusal(address, first), None)
            return
        if first[0] != 0x01 or len(first) < _AE_TITLES.stop:
            self._refuse(request, Refusal(address, "no association request"), ABORT_PDU)
            return
        calling_ae = first[26:42].decode("ascii", "replace").strip()
        reason = self.policy.refusal(
            calling_ae, address, tls=isinstance(request, ssl.SSLSocket),
            certificate_name=_certificate_name(request))
        if reason is not None:
            self._refuse(request, Refusal(address, reason, calling_ae), REJECT_NOT_ACCEPTED)
            return
        slot = self.admission.admit(address, calling_ae)
        if slot is None:
            self._refuse(request, Refusal(address, "association limit reached", calling_ae),
                         REJECT_BUSY)
            return
        request.settimeout(self.settings.network_timeout)
        with self._admitted_lock:
            self._admitted[id(request)] = _Admitted(first, slot)
        try:
            self.finish_request(request, client_address)
        except Exception:
            slot.release()
            with self._admitted_lock:
                self._admitted.pop(id(request), None)
            self.handle_error(request, client_address)
            self.shutdown_request(request)


class SharedPortAssociationServer(GuardedAssociationServer):
    """A guarded server whose listening socket shares its port with the node's other
    listener processes (``SO_REUSEPORT``: Linux hands each new connection to one of
    the sockets bound to the port by processes of the same user)."""

    def server_bind(self) -> None:
        """Set ``SO_REUSEPORT``, then bind as pynetdicom does."""
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()
