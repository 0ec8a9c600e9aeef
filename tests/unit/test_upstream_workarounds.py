"""The pynetdicom and pydicom internals ``node.dicom.upstream_workarounds`` relies on.

Each test names the upstream behaviour a workaround depends on, and fails when it changes:
then the workaround is either wrong or no longer needed.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import logging
import re
import select
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import VALIDATORS
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import DT_2, TRANSITION_TABLE, StateMachine
from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    build_context,
    negotiate_as_acceptor,
)
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import RequestHandler

from node.dicom import pdata_fast_path, upstream_workarounds
from node.dicom.upstream_workarounds import (
    DulWakeUp,
    SharedContexts,
    remember_valid_uids,
    skip_unlogged_handlers,
    wake_instead_of_polling,
)


def _supported() -> list[PresentationContext]:
    contexts = []
    for context in AllStoragePresentationContexts[:20]:
        assert context.abstract_syntax is not None
        supported = build_context(context.abstract_syntax,
                                  [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        supported.scu_role = True
        supported.scp_role = True
        contexts.append(supported)
    return contexts


def _snapshot(contexts: list[PresentationContext]) -> list[tuple[object, ...]]:
    return [(cx.context_id, cx.abstract_syntax, tuple(cx.transfer_syntax), cx.scu_role,
             cx.scp_role, cx.result, cx.as_scu, cx.as_scp) for cx in contexts]


def test_pynetdicom_still_deep_copies_the_server_contexts_for_each_association() -> None:
    """If this fails, upstream stopped copying: ``share_contexts`` can go."""
    source = inspect.getsource(RequestHandler._create_association)
    assert "deepcopy(self.server.contexts)" in source


def test_a_deep_copy_of_shared_contexts_shares_the_context_objects() -> None:
    shared = SharedContexts(_supported())
    copied = copy.deepcopy(shared)
    assert copied == list(shared) and copied is not shared
    assert all(a is b for a, b in zip(copied, shared, strict=True))


def test_negotiation_never_changes_the_supported_contexts() -> None:
    """Sharing one list between associations is safe only while negotiation just reads it."""
    supported = _supported()
    before = _snapshot(supported)
    requested = []
    for number, context in enumerate(supported[:10]):
        assert context.abstract_syntax is not None
        proposal = build_context(context.abstract_syntax,
                                 [ImplicitVRLittleEndian, "1.2.840.10008.1.2.4.50"])
        proposal.context_id = 2 * number + 1
        requested.append(proposal)
    roles = {supported[0].abstract_syntax: (True, True),
             supported[1].abstract_syntax: (False, True)}
    accepted, _ = negotiate_as_acceptor(requested, supported, roles)  # type: ignore[arg-type]
    assert [cx.result for cx in accepted] == [0x00] * 10
    assert all(result is not original for result in accepted for original in supported)
    assert _snapshot(supported) == before


def test_pynetdicom_still_spools_through_the_hooks_the_listener_replaces() -> None:
    """``spool_received_datasets`` swaps ``_config`` and ``NamedTemporaryFile`` as
    ``DIMSEMessage.decode_msg`` sees them, and relies on the storage service removing the
    file by its name after the handler, tolerating a file already moved."""
    decode = inspect.getsource(upstream_workarounds._original_decode_msg)
    assert "_config.STORE_RECV_CHUNKED_DATASET" in decode
    assert "NamedTemporaryFile(" in decode
    assert "self._data_set_path = Path(self._data_set_file.name)" in decode
    scp = inspect.getsource(StorageServiceClass.SCP)
    assert "os.unlink(req._dataset_file.name)" in scp
    assert "except OSError" in scp


def test_pynetdicom_still_handles_data_fragments_as_the_shortcut_does() -> None:
    """``pdata_fast_path`` writes data fragments as ``decode_msg`` would (the bytes after
    the control header, to the message's spool file), relies on a completed message
    leaving ``dimse.message`` (an unfinished one is discarded when the reading thread
    ends), on ``_read_pdu_data`` reading through ``socket.recv`` (bytes given back are
    read again), and on ``_decode_pdu`` and the state machine triggering the events the
    shortcut checks for."""
    decode = inspect.getsource(upstream_workarounds._original_decode_msg)
    assert "self._data_set_file.write(data[1:])" in decode
    assert "if control_header_byte & 2 != 0:" in decode
    assert "self.message = None" in inspect.getsource(DIMSEServiceProvider.receive_primitive)
    read = inspect.getsource(DULServiceProvider._read_pdu_data)
    assert "self.socket.recv(6)" in read and "self.socket.recv(pdu_length)" in read
    assert "self._recv_pdu.put(pdu)" in read
    triggers = (inspect.getsource(DULServiceProvider._decode_pdu)
                + inspect.getsource(StateMachine.do_action))
    for event in pdata_fast_path.UNTRIGGERED_EVENTS:
        assert f"evt.{event.name}" in triggers
    assert DT_2.__name__ == TRANSITION_TABLE[("Evt10", "Sta6")].replace("-", "_")


def test_spooling_leaves_other_receivers_in_memory() -> None:
    """The switch is per server: pynetdicom's process-wide setting stays off."""
    upstream_workarounds._install()
    assert _config.STORE_RECV_CHUNKED_DATASET is False
    assert DIMSEMessage.decode_msg is upstream_workarounds._decode_msg
    from pynetdicom import dimse_messages

    assert dimse_messages._config.STORE_RECV_CHUNKED_DATASET is False  # type: ignore[attr-defined]
    upstream_workarounds._spooling.folder = "/somewhere"
    try:
        assert dimse_messages._config.STORE_RECV_CHUNKED_DATASET is True  # type: ignore[attr-defined]
    finally:
        upstream_workarounds._spooling.folder = None
    assert dimse_messages._config.LOG_HANDLER_LEVEL == _config.LOG_HANDLER_LEVEL


@pytest.fixture
def remembered() -> Iterator[None]:
    remember_valid_uids()
    upstream_workarounds._known_valid_uids.clear()
    upstream_workarounds._conformant_uids.clear()
    yield


def test_pydicom_uid_still_validates_through_its_module_validate_value() -> None:
    """``remember_valid_uids`` replaces the name ``UID.__new__`` calls."""
    assert 'validate_value("UI", val, validation_mode)' in inspect.getsource(UID.__new__)


def test_a_remembered_uid_is_built_without_validating_it_again(
        remembered: None, monkeypatch: pytest.MonkeyPatch) -> None:
    UID("1.2.3.4")
    assert "1.2.3.4" in upstream_workarounds._known_valid_uids
    calls: list[str] = []

    def counting_validator(vr: str, value: str) -> tuple[bool, str]:
        calls.append(value)
        return True, ""

    monkeypatch.setitem(VALIDATORS, "UI", counting_validator)
    UID("1.2.3.4")
    UID("1.2.3.5")
    assert calls == ["1.2.3.5"]


def test_an_invalid_uid_is_still_refused_or_warned_about_every_time(remembered: None) -> None:
    with pytest.raises(ValueError):
        UID("1.2.x", validation_mode=pydicom_config.RAISE)
    with pytest.raises(ValueError):
        UID("1.2.x", validation_mode=pydicom_config.RAISE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        UID("1.2.x", validation_mode=pydicom_config.WARN)
    assert caught
    assert "1.2.x" not in upstream_workarounds._known_valid_uids


def test_conformance_is_remembered_only_for_conformant_uids(remembered: None) -> None:
    assert UID("1.2.840.10008.1.2.1").is_valid
    assert "1.2.840.10008.1.2.1" in upstream_workarounds._conformant_uids
    assert UID("1.2.840.10008.1.2.1").is_valid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a leading zero: pydicom warns as it builds it
        leading_zero = UID("1.02.3")
    assert not leading_zero.is_valid
    assert not leading_zero.is_valid
    assert "1.02.3" not in upstream_workarounds._conformant_uids


@pytest.fixture
def log_handler_level() -> Iterator[None]:
    level = logging.getLogger("pynetdicom").level
    previous = _config.LOG_HANDLER_LEVEL
    yield
    _config.LOG_HANDLER_LEVEL = previous
    logging.getLogger("pynetdicom").setLevel(level)


def test_standard_logging_handlers_are_skipped_only_when_nothing_would_be_logged(
        log_handler_level: None) -> None:
    _config.LOG_HANDLER_LEVEL = "standard"
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG)
    skip_unlogged_handlers()
    assert _config.LOG_HANDLER_LEVEL == "standard"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    skip_unlogged_handlers()
    assert _config.LOG_HANDLER_LEVEL == "none"


# --------------------------------------------------------------------------- event-driven waits

#: SHA-256 of pynetdicom 3.0.4's ``Association._run_reactor`` source, which
#: ``_WakingAssociation._run_reactor`` copies with its one-millisecond sleep replaced.
UPSTREAM_RUN_REACTOR_SHA256 = "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee"


def test_the_copied_association_reactor_is_still_upstreams() -> None:
    """If this fails, pynetdicom changed its reactor: copy it again (or drop the copy)."""
    source = inspect.getsource(Association._run_reactor)
    assert hashlib.sha256(source.encode()).hexdigest() == UPSTREAM_RUN_REACTOR_SHA256
    assert "time.sleep(0.001)" in source


def test_pynetdicom_still_polls_where_the_wake_ups_replace_the_polling() -> None:
    """The DUL reactor sleeps between polls and stops on ``_kill_thread``; the queues
    it and the association thread read are plain ``queue.Queue`` objects."""
    source = inspect.getsource(DULServiceProvider.run_reactor)
    assert "time.sleep(self._run_loop_delay)" in source
    assert "if self._kill_thread:" in source
    assert "self.socket.ready" in inspect.getsource(DULServiceProvider._is_transport_event)
    init = inspect.getsource(DULServiceProvider.__init__)
    for name in ("to_provider_queue", "to_user_queue", "event_queue"):
        assert f"self.{name}" in init


def _acceptor() -> Association:
    ae = AE()
    return Association(ae, "acceptor")


def test_each_hand_over_wakes_the_thread_that_waits_for_it() -> None:
    assoc = _acceptor()
    wake_up = wake_instead_of_polling(assoc)
    try:
        assert isinstance(assoc, Association) and isinstance(assoc.dul, DULServiceProvider)
        for put in (assoc.dul.to_provider_queue.put, assoc.dul.event_queue.put):
            put("item")
            assert select.select([wake_up], [], [], 0)[0] == [wake_up]
            wake_up.drain()
            assert select.select([wake_up], [], [], 0)[0] == []
        for put in (assoc.dul.to_user_queue.put, assoc.dimse.msg_queue.put):
            assoc._wake.clear()  # type: ignore[attr-defined]
            put((None, None))
            assert assoc._wake.is_set()  # type: ignore[attr-defined]
        assert assoc.dul.to_provider_queue.get(False) == "item"  # still a queue
    finally:
        wake_up.close()


def test_stopping_the_dul_wakes_its_thread() -> None:
    assoc = _acceptor()
    wake_up = wake_instead_of_polling(assoc)
    try:
        assert assoc.dul._kill_thread is False
        assoc.dul.kill_dul()
        assert assoc.dul._kill_thread is True
        assert select.select([wake_up], [], [], 0)[0] == [wake_up]
    finally:
        wake_up.close()


def test_a_signal_after_the_wake_up_closed_is_ignored() -> None:
    wake_up = DulWakeUp()
    wake_up.close()
    assert not wake_up.open
    wake_up.signal()
    wake_up.drain()


# --------------------------------------------------------------------------- set_uid


def test_pynetdicom_modules_still_call_set_uid_by_their_own_name() -> None:
    """If this fails, a module stopped importing ``set_uid`` (or a new one started):
    update ``SET_UID_MODULES``."""
    import pynetdicom

    package = Path(pynetdicom.__file__).parent
    importing = {path.stem for path in package.glob("*.py")
                 if re.search(r"^from pynetdicom\.utils import .*\bset_uid\b",
                              path.read_text(), re.MULTILINE)}
    assert importing | {"utils"} == set(upstream_workarounds.SET_UID_MODULES)


@pytest.fixture()
def remembered_set_uids() -> Iterator[None]:
    import pynetdicom.pdu_items

    original = pynetdicom.pdu_items.set_uid
    original_add = PresentationContext.add_transfer_syntax
    upstream_workarounds.remember_set_uids()
    try:
        yield
    finally:
        for name in upstream_workarounds.SET_UID_MODULES:
            module = importlib.import_module(f"pynetdicom.{name}")
            module.set_uid = original  # type: ignore[attr-defined]
        PresentationContext.add_transfer_syntax = original_add  # type: ignore[method-assign]
        upstream_workarounds._set_uids.clear()
        upstream_workarounds._transfer_syntaxes.clear()


def test_a_remembered_set_uid_gives_the_same_uid(remembered_set_uids: None) -> None:
    import pynetdicom.pdu_items

    first = pynetdicom.pdu_items.set_uid(b"1.2.840.10008.1.2.1", "Transfer Syntax")
    again = pynetdicom.pdu_items.set_uid(b"1.2.840.10008.1.2.1", "Transfer Syntax")
    assert first == again == ExplicitVRLittleEndian and isinstance(again, UID)
    assert pynetdicom.pdu_items.set_uid("1.2.840.10008.1.2.1", "x") == ExplicitVRLittleEndian


def test_set_uid_still_refuses_and_warns_every_time(remembered_set_uids: None,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    import pynetdicom.pdu_items

    for _ in range(2):
        with pytest.raises(ValueError):
            pynetdicom.pdu_items.set_uid("1." * 40, "Abstract Syntax")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        for _ in range(2):
            assert pynetdicom.pdu_items.set_uid("1.02.3", "Abstract Syntax") == "1.02.3"
    assert sum("Non-conformant" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(ValueError):
        pynetdicom.pdu_items.set_uid("", "Abstract Syntax", allow_empty=False)
    assert pynetdicom.pdu_items.set_uid(None, "Abstract Syntax") is None


def test_pynetdicom_still_checks_each_transfer_syntax_it_adds() -> None:
    """If this fails, ``add_transfer_syntax`` changed: check what its memory skips."""
    source = inspect.getsource(upstream_workarounds._original_add_transfer_syntax)
    for check in ("validate_uid(syntax)", "syntax.is_valid", "syntax.is_transfer_syntax",
                  "self._transfer_syntax.append(syntax)"):
        assert check in source


_SYNTAXES = [ExplicitVRLittleEndian, "1.2.840.10008.1.2", b"1.2.840.10008.1.2.4.50",
             "1.2.840.10008.1.2", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", "1.02.3", None]


def _contexts_built(count: int) -> list[list[str]]:
    built = []
    for _ in range(count):
        context = PresentationContext()
        for syntax in _SYNTAXES:
            context.add_transfer_syntax(syntax)
        built.append(list(context.transfer_syntax))
    return built


def test_remembered_transfer_syntaxes_build_the_same_contexts_and_warnings(
        caplog: pytest.LogCaptureFixture) -> None:
    import pynetdicom.pdu_items

    original_set_uid = pynetdicom.pdu_items.set_uid
    original_add = PresentationContext.add_transfer_syntax
    # pynetdicom's own (a listener started earlier in this process installs the memory)
    PresentationContext.add_transfer_syntax = (  # type: ignore[method-assign]
        upstream_workarounds._original_add_transfer_syntax)
    try:
        with caplog.at_level(logging.WARNING, logger="pynetdicom"):
            upstream = _contexts_built(2)
    finally:
        PresentationContext.add_transfer_syntax = original_add  # type: ignore[method-assign]
    upstream_warnings = [r.getMessage() for r in caplog.records]
    caplog.clear()
    upstream_workarounds.remember_set_uids()
    try:
        with caplog.at_level(logging.WARNING, logger="pynetdicom"):
            remembered = _contexts_built(2)
    finally:
        for name in upstream_workarounds.SET_UID_MODULES:
            module = importlib.import_module(f"pynetdicom.{name}")
            module.set_uid = original_set_uid  # type: ignore[attr-defined]
        PresentationContext.add_transfer_syntax = original_add  # type: ignore[method-assign]
        upstream_workarounds._set_uids.clear()
        upstream_workarounds._transfer_syntaxes.clear()
    assert remembered == upstream
    assert [r.getMessage() for r in caplog.records] == upstream_warnings
    assert any("non-conformant" in message for message in upstream_warnings)
    assert any("not a transfer syntax" in message for message in upstream_warnings)
