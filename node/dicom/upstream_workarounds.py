"""Workarounds for costs in pynetdicom's receive path (3.0), until upstream changes them.

1. **Per-association deep copy of the supported presentation contexts.**
   ``RequestHandler._create_association`` gives every association
   ``deepcopy(server.contexts)``: for the node's 171 contexts that is 2,724 transfer
   syntax UIDs, each re-validated by ``UID.__new__``, 30–40 ms of CPU for every
   association. Negotiation (``presentation.negotiate_as_acceptor``) only reads these
   contexts and builds new ones for its results, so one shared, read-only list is
   enough: :class:`SharedContexts` is a list whose deep copy is a shallow copy.

2. **A received data set is assembled in memory.** pynetdicom can write a C-STORE data
   set to a file as its PDUs arrive (``_config.STORE_RECV_CHUNKED_DATASET``), but the
   switch is process-wide, and the file goes to the system temporary folder. The
   listener wants it for its own associations only (other pynetdicom receivers in the
   same process keep ``encoded_dataset()``), and in the storage volume, so that the
   spooled file becomes the stored file by a link and a rename instead of a copy.
   :func:`spool_received_datasets` switches spooling on for the associations of one
   server, into one folder; :func:`spooled_path` tells a C-STORE handler where its data
   set is.

3. **Every UID is validated by regular expressions each time it is built.** An
   A-ASSOCIATE-RQ from DCMTK's ``storescu`` proposes about 120 presentation contexts,
   and decoding and negotiating it builds about 1,800 ``pydicom.uid.UID`` objects,
   almost all of them the same few hundred strings, each checked by
   ``valuerep.validate_value`` (two regular expressions): more CPU than anything else
   in a small association. :func:`remember_valid_uids` lets ``UID`` skip the check for
   a string that has already passed it (a bounded set); a string not yet seen, or one
   that fails, is checked, warned about or refused exactly as before; ``UID.is_valid``
   (the conformance check negotiation asks for each transfer syntax) is remembered the
   same way.

4. **Logging handlers that format what is never logged.** pynetdicom binds its standard
   PDU and DIMSE logging handlers to every association; they format every presentation
   context of every request before the logger drops the lines (the node keeps
   pynetdicom's logger at WARNING). :func:`skip_unlogged_handlers` uses pynetdicom's own
   switch, ``_config.LOG_HANDLER_LEVEL = "none"``, when that logger would drop them.

5. **Each association's two threads poll.** The DUL (reading) thread polls its socket and
   send queue, and the association thread its DIMSE and ACSE queues, each sleeping a
   millisecond between looks, so every hand-over within a small association waits for a
   poll. :func:`wake_instead_of_polling` makes each queue wake its reader when an item
   is put (the reading thread selects on its socket and a :class:`DulWakeUp`), with a
   copy of the association loop that waits instead of sleeping.

6. **Every UID of a request is converted and validated again.** ``utils.set_uid`` runs
   about 700 times for a DCMTK A-ASSOCIATE-RQ; :func:`remember_set_uids` answers a string
   it has already accepted as valid and conformant from a bounded table.

7. **Every P-DATA-TF PDU goes through the whole state machine.** While a C-STORE data
   set arrives, the reading thread writes PDUs made only of its data fragments straight
   to the spool file (:mod:`node.dicom.pdata_fast_path`, called from the reading
   thread's ``_read_pdu_data``); everything else is read by pynetdicom as before.

8. **A data set cut off half-way leaves its spool file behind.** pynetdicom removes a
   spooled file only after handing it to a C-STORE handler; when an association ends in
   the middle of a data set (an abort, a stall, a broken PDU), the reading thread
   removes that file as it ends.

All rely on pynetdicom and pydicom internals; ``tests/unit/test_upstream_workarounds.py``
fails when those change (or when upstream no longer deep-copies, and the first
workaround can go).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import queue
import socket
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import ModuleType
from typing import IO, Any, cast

import pydicom.uid
from pydicom import config as pydicom_config
from pydicom.valuerep import VALIDATORS, validate_value
from pynetdicom import _config, dimse_messages, evt
from pynetdicom import utils as pynetdicom_utils
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.presentation import PresentationContext

from node.dicom.arriving import ArrivingFile
from node.dicom.pdata_fast_path import read_data_fragments

_ASSOCIATION_LOGGER = logging.getLogger("pynetdicom.association")  # upstream's own logger

#: Attribute of an association server naming the folder its C-STORE data sets spool to.
SPOOL_FOLDER_ATTRIBUTE = "spool_folder"
#: Names of spooled files: hidden temporaries, which ``InstanceStore.sweep_temporaries``
#: removes after a crash.
SPOOL_PREFIX, SPOOL_SUFFIX = ".received.", ".tmp"


class SharedContexts(list):  # type: ignore[type-arg]
    """Supported presentation contexts shared, read-only, by every association.

    ``deepcopy`` returns a new list holding the same context objects: negotiation reads
    them and never changes them.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


def share_contexts(server: Any) -> None:
    """Stop ``server`` from deep-copying its presentation contexts for each association."""
    server.contexts = SharedContexts(server.contexts)


_spooling = threading.local()


class _ConfigView(ModuleType):
    """``pynetdicom._config`` as ``dimse_messages`` sees it: spooling on for the data
    sets being decoded for a spooling server, pynetdicom's own setting otherwise."""

    def __getattr__(self, name: str) -> Any:
        if name == "STORE_RECV_CHUNKED_DATASET" and getattr(_spooling, "folder", None):
            return True
        return getattr(_config, name)


def _spool_file(*args: Any, **kwargs: Any) -> IO[bytes]:
    """``NamedTemporaryFile`` for ``dimse_messages``: into the spooling server's folder.

    A spool folder that has gone is made again; one that cannot be written to gives way
    to the system's temporary folder, so that the C-STORE handler still runs and answers
    the storage failure with its status (an exception here would abort the association).
    """
    folder = getattr(_spooling, "folder", None)
    if folder is None:
        return tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115 (pynetdicom closes it)
    spooled = dict(kwargs, dir=folder, prefix=SPOOL_PREFIX, suffix=SPOOL_SUFFIX)
    try:
        try:
            opened = tempfile.NamedTemporaryFile(*args, **spooled)  # noqa: SIM115
        except FileNotFoundError:
            os.makedirs(folder, mode=0o750, exist_ok=True)
            opened = tempfile.NamedTemporaryFile(*args, **spooled)  # noqa: SIM115
        return cast(IO[bytes], ArrivingFile(opened))
    except OSError:
        return tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115


_original_decode_msg = DIMSEMessage.decode_msg
_install_lock = threading.Lock()


def _decode_msg(self: DIMSEMessage, primitive: Any, assoc: Any = None) -> bool:
    folder = getattr(getattr(assoc, "_server", None), SPOOL_FOLDER_ATTRIBUTE, None)
    if folder is None:
        return _original_decode_msg(self, primitive, assoc)
    _spooling.folder = folder
    try:
        return _original_decode_msg(self, primitive, assoc)
    finally:
        _spooling.folder = None


def _install() -> None:
    with _install_lock:
        if DIMSEMessage.decode_msg is _decode_msg:
            return
        view = _ConfigView("pynetdicom._config")
        dimse_messages._config = view  # type: ignore[attr-defined]
        dimse_messages.NamedTemporaryFile = _spool_file  # type: ignore[attr-defined,assignment]
        DIMSEMessage.decode_msg = _decode_msg  # type: ignore[method-assign]


def spool_received_datasets(server: Any, folder: Path) -> None:
    """Spool the C-STORE data sets ``server``'s associations receive into ``folder``.

    The file holds the preamble, pynetdicom's file meta and the data set exactly as
    received: the same bytes as ``event.encoded_dataset()``. It is written (not fsynced)
    as PDUs arrive; pynetdicom removes it after the handler returns unless the handler
    has moved it.
    """
    _install()
    setattr(server, SPOOL_FOLDER_ATTRIBUTE, str(folder))


def spooled_path(event: Any) -> Path | None:
    """The file holding this C-STORE's data set, or ``None`` when it was kept in memory."""
    path = getattr(event.request, "_dataset_path", None)
    return path if isinstance(path, Path) else None


def spooled_digest(event: Any) -> Future[str] | None:
    """The SHA-256 of this C-STORE's spooled file, computed as it arrived, or ``None``."""
    spooled = getattr(event.request, "_dataset_file", None)
    return spooled.digest() if isinstance(spooled, ArrivingFile) else None


#: How many distinct valid UIDs are remembered before the set starts again.
KNOWN_UIDS_LIMIT = 8192
_known_valid_uids: set[str] = set()


def _validate_value_remembering_uids(vr: str, value: Any, validation_mode: int,
                                     validator: Any = None) -> None:
    """``valuerep.validate_value`` for ``pydicom.uid``: a UID string that passed once
    passes again without its regular expressions; everything else as pydicom does it."""
    if (vr != "UI" or validator is not None or not isinstance(value, str)
            or validation_mode == pydicom_config.IGNORE):
        validate_value(vr, value, validation_mode, validator)
        return
    if value in _known_valid_uids:
        return
    check: Any = VALIDATORS.get("UI")
    if check is not None and check("UI", value)[0]:
        if len(_known_valid_uids) >= KNOWN_UIDS_LIMIT:
            _known_valid_uids.clear()
        _known_valid_uids.add(str(value))
        return
    validate_value(vr, value, validation_mode)


def remember_valid_uids() -> None:
    """Let ``pydicom.uid.UID`` skip re-validating a UID string it has already accepted."""
    pydicom.uid.validate_value = _validate_value_remembering_uids  # type: ignore[attr-defined]
    if not isinstance(pydicom.uid.UID.__dict__.get("is_valid"), _RememberedConformance):
        pydicom.uid.UID.is_valid = _RememberedConformance(  # type: ignore[method-assign,assignment]
            pydicom.uid.UID.__dict__["is_valid"])


_conformant_uids: set[str] = set()


class _RememberedConformance(property):
    """``UID.is_valid`` remembering the conformant strings it has seen (bounded)."""

    def __init__(self, original: property) -> None:
        self.original = original

        def is_valid(uid: pydicom.uid.UID) -> bool:
            if uid in _conformant_uids:
                return True
            valid = bool(original.fget(uid))  # type: ignore[misc]
            if valid:
                if len(_conformant_uids) >= KNOWN_UIDS_LIMIT:
                    _conformant_uids.clear()
                _conformant_uids.add(str(uid))
            return valid

        super().__init__(is_valid, doc=original.__doc__)


#: pynetdicom modules that call ``set_uid`` by the name they imported.
SET_UID_MODULES = ("ae", "dimse_primitives", "pdu_items", "pdu_primitives", "presentation",
                   "utils")
_original_set_uid = pynetdicom_utils.set_uid
_set_uids: dict[tuple[Any, ...], pydicom.uid.UID] = {}


def _set_uid_remembering(value: Any, name: str, allow_empty: bool = True,
                         allow_none: bool = True, validate: bool = True) -> Any:
    """``pynetdicom.utils.set_uid``, answering a non-empty UID it has already accepted as
    valid and conformant from memory (such a call has no other effect: no log line)."""
    if not value or not isinstance(value, (str, bytes)):
        return _original_set_uid(value, name, allow_empty, allow_none, validate)
    key = (value, validate, _config.VALIDATORS["UI"], _config.ENFORCE_UID_CONFORMANCE)
    known = _set_uids.get(key)
    if known is not None:
        return known
    uid = _original_set_uid(value, name, allow_empty, allow_none, validate)
    if uid is not None and uid.is_valid:
        if len(_set_uids) >= KNOWN_UIDS_LIMIT:
            _set_uids.clear()
        _set_uids[key] = uid
    return uid


_original_add_transfer_syntax = PresentationContext.add_transfer_syntax
_transfer_syntaxes: dict[tuple[Any, ...], pydicom.uid.UID] = {}


def _add_transfer_syntax_remembering(self: PresentationContext, syntax: Any) -> None:
    """``PresentationContext.add_transfer_syntax``, skipping the checks for a string it has
    already accepted without any warning (valid, conformant, a known or private transfer
    syntax)."""
    if isinstance(syntax, str):
        key = (syntax, _config.VALIDATORS["UI"], _config.ENFORCE_UID_CONFORMANCE)
        known = _transfer_syntaxes.get(key)
        if known is not None:
            if known not in self._transfer_syntax:
                self._transfer_syntax.append(known)
            return
    _original_add_transfer_syntax(self, syntax)
    if not isinstance(syntax, str) or not syntax:
        return
    uid = next((added for added in self._transfer_syntax if added == syntax), None)
    if uid is not None and uid.is_valid and (uid.is_private or uid.is_transfer_syntax) and \
            pynetdicom_utils.validate_uid(uid):
        if len(_transfer_syntaxes) >= KNOWN_UIDS_LIMIT:
            _transfer_syntaxes.clear()
        _transfer_syntaxes[key] = uid


def remember_set_uids() -> None:
    """Let pynetdicom convert and check each UID string it has already accepted only once
    (``set_uid`` and ``PresentationContext.add_transfer_syntax``)."""
    for module_name in SET_UID_MODULES:
        module = importlib.import_module(f"pynetdicom.{module_name}")
        module.set_uid = _set_uid_remembering  # type: ignore[attr-defined]
    PresentationContext.add_transfer_syntax = _add_transfer_syntax_remembering  # type: ignore[method-assign]


def skip_unlogged_handlers() -> None:
    """Do not bind pynetdicom's standard logging handlers to new associations when its
    logger would drop everything they write (they log at DEBUG and INFO)."""
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        _config.LOG_HANDLER_LEVEL = "none"


# --------------------------------------------------------------------------- event-driven waits

#: Longest wait of an association's two threads when nothing happens: the time-outs they
#: check (ARTIM, network idle) fire at most this late. Anything they wait for ends the
#: wait at once.
IDLE_WAIT_SECONDS = 0.05


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A ``queue.Queue`` that calls ``on_put`` after each item is put."""

    on_put: Callable[[], None]

    def _put(self, item: Any) -> None:
        super()._put(item)
        self.on_put()


def _wake_on_put(waiting: queue.Queue, on_put: Callable[[], None]) -> None:  # type: ignore[type-arg]
    waiting.__class__ = _WakingQueue  # same object, so every holder sees the wake-ups
    waiting.on_put = on_put  # type: ignore[attr-defined]


class DulWakeUp:
    """Ends the wait of an association's reading thread (a socket pair it selects on).

    The DUL thread waits for data from the peer; it must also wake when the association
    thread hands it a PDU to send (``to_provider_queue``), an event (``event_queue``) or
    tells it to stop (``_kill_thread``).
    """

    def __init__(self) -> None:
        self._receiver, self._sender = socket.socketpair()
        self._receiver.setblocking(False)
        self._sender.setblocking(False)

    def fileno(self) -> int:
        """For ``select``: readable once :meth:`signal` was called."""
        return self._receiver.fileno()

    @property
    def open(self) -> bool:
        return self._receiver.fileno() != -1

    def signal(self) -> None:
        """Wake the waiting thread (never raises).

        Always one byte: a flag that skipped the write while a wake-up seemed pending
        could lose one to a concurrent :meth:`drain`. A full buffer (``BlockingIOError``)
        means a wake-up is pending anyway.
        """
        with contextlib.suppress(OSError):
            self._sender.send(b"\0")

    def drain(self) -> None:
        """Forget the signals received so far (called by the waiting thread)."""
        with contextlib.suppress(OSError):
            while self._receiver.recv(64):
                pass

    def close(self) -> None:
        self._receiver.close()
        self._sender.close()


class _WakingDul(DULServiceProvider):
    """pynetdicom's DUL provider whose stop flag and thread end wake the waiting threads."""

    _wake_up: DulWakeUp
    _on_exit: Callable[[], None]

    @property
    def _kill_thread(self) -> bool:
        return bool(self.__dict__.get("_kill_flag", False))

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self.__dict__["_kill_flag"] = value
        if value:
            self._wake_up.signal()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._discard_unfinished_data_set()
            self._on_exit()
            self._wake_up.close()

    def _discard_unfinished_data_set(self) -> None:
        """Remove the spool file of a data set cut off half-way (the reading thread, which
        alone writes it, has ended; a complete data set has left ``dimse.message``)."""
        message = getattr(getattr(self.assoc, "dimse", None), "message", None)
        spooled = getattr(message, "_data_set_file", None)
        if isinstance(spooled, ArrivingFile):
            with contextlib.suppress(OSError):
                spooled.discard()

    def _read_pdu_data(self) -> None:
        if not read_data_fragments(self):
            super()._read_pdu_data()


class _WakingAssociation(Association):
    """pynetdicom's association whose reactor waits for its queues instead of polling."""

    _wake: threading.Event

    def _run_reactor(self) -> None:
        """``Association._run_reactor`` of pynetdicom 3.0.4, with its ``time.sleep(0.001)``
        replaced by a wait that a DIMSE message, an ACSE primitive, the end of the DUL
        thread or a kill ends at once (``tests/unit/test_upstream_workarounds.py`` checks
        that the upstream method is still the one copied here)."""
        self._is_paused = False
        while not self._kill:
            if self.dimse.msg_queue.empty():  # a message left from the last turn: no wait
                self._wake.wait(IDLE_WAIT_SECONDS)
            self._wake.clear()

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                _ASSOCIATION_LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                _ASSOCIATION_LOGGER.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                _ASSOCIATION_LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return

    def kill(self) -> None:
        self._wake.set()
        super().kill()


def wake_instead_of_polling(assoc: Association) -> DulWakeUp:
    """Make a new acceptor association's two threads wait for work instead of polling.

    pynetdicom's association thread sleeps a millisecond between looks at its queues,
    and its DUL (reading) thread does the same between polls of the socket: each hand-over
    (A-ASSOCIATE-AC, each C-STORE request and response, A-RELEASE) waits for the next
    poll, a millisecond or much more on a busy machine, and an idle association wakes two
    thousand times a second. Here each queue wakes its reader as an item is put, and the
    reading thread selects on the socket and a :class:`DulWakeUp` (the association's
    socket calls :meth:`DulWakeUp.fileno` in its ``ready``).

    Call before the association's thread starts; returns the DUL's wake-up.
    """
    wake_up = DulWakeUp()
    wake = threading.Event()
    dul = assoc.dul
    dul.__dict__["_kill_flag"] = dul.__dict__.pop("_kill_thread", False)
    dul.__class__ = _WakingDul
    dul._wake_up = wake_up  # type: ignore[attr-defined]
    dul._on_exit = wake.set  # type: ignore[attr-defined]
    dul._run_loop_delay = 0.0  # its socket's ``ready`` waits instead

    def wake_dul() -> None:
        # The DUL thread puts most events itself, and its socket does not wait while
        # events or primitives are queued: only another thread's put needs the wake-up
        # (one system call saved per PDU).
        if threading.get_ident() != dul.ident:
            wake_up.signal()

    _wake_on_put(dul.to_provider_queue, wake_dul)
    _wake_on_put(dul.event_queue, wake_dul)
    _wake_on_put(dul.to_user_queue, wake.set)
    _wake_on_put(assoc.dimse.msg_queue, wake.set)
    assoc.__class__ = _WakingAssociation
    assoc._wake = wake  # type: ignore[attr-defined]
    return wake_up
