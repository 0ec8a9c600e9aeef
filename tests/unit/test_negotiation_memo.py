"""The association-request memo relies on pynetdicom internals; these tests fail when
those change, and check the negotiation memo's own rules without a network."""

from __future__ import annotations

import hashlib
import inspect

from pynetdicom import acse, dul, fsm
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
)

from node.dicom import negotiation_memo
from node.dicom.negotiation_memo import (
    NegotiationMemo,
    _negotiate_remembering,
    _RememberedContexts,
    _Request,
)

#: pynetdicom 3.0.4's AE-7 action, whose queue handling and result state the memo's copy keeps.
UPSTREAM_AE_7_SHA256 = "c62284735836c78a25d855f8beecd976441564d1dbf784b17e7adb1cdf2496a7"


def _digest(function: object) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()  # type: ignore[arg-type]


def test_pynetdicom_still_negotiates_and_accepts_where_the_memo_hooks_in() -> None:
    """``ACSE`` calls ``negotiate_as_acceptor`` by its module name, the DUL decodes each
    PDU in ``_decode_pdu`` and AE-6 asks the request PDU for its primitive, the FSM looks
    its actions up in ``ACTIONS``, and AE-7 is still the action the memo's copy mirrors."""
    negotiate = inspect.getsource(acse.ACSE._negotiate_as_acceptor)
    assert "result, ac_roles = negotiate_as_acceptor(" in negotiate
    assert "assoc_rq.presentation_context_definition_list," in negotiate
    assert "self.acceptor.supported_contexts," in negotiate
    assert "pdu.decode(b)" in inspect.getsource(dul.DULServiceProvider._decode_pdu)
    assert "self._decode_pdu(" in inspect.getsource(dul.DULServiceProvider._read_pdu_data)
    assert "primitive = recv_pdu.to_primitive()" in inspect.getsource(fsm.AE_6)
    assert "action = ACTIONS[action_name]" in inspect.getsource(fsm.StateMachine.do_action)
    assert _digest(negotiation_memo._original_send_accept_action[1]) == UPSTREAM_AE_7_SHA256
    assert set(vars(A_ASSOCIATE())) >= {"_presentation_context_definition_list",
                                        "_user_information"}


def _request() -> _Request:
    primitive = A_ASSOCIATE()
    primitive.calling_ae_title = "MODALITY"
    primitive.called_ae_title = "RADNODE"
    primitive.application_context_name = APPLICATION_CONTEXT_NAME
    maximum_length = MaximumLengthNotification()
    maximum_length.maximum_length_received = 16384
    primitive.user_information = [maximum_length]
    for index, sop_class in enumerate((DigitalXRayImageStorageForPresentation,
                                       CTImageStorage)):
        context = build_context(sop_class)
        context.context_id = 2 * index + 1
        primitive.presentation_context_definition_list.append(context)
    return _Request(A_ASSOCIATE_RQ(primitive), primitive)


def _supported(*sop_classes: str) -> list[PresentationContext]:
    return [build_context(sop_class) for sop_class in sop_classes]


def test_negotiation_is_reused_only_against_the_same_supported_contexts() -> None:
    request = _request()
    all_classes = _supported(DigitalXRayImageStorageForPresentation, CTImageStorage)
    first = _negotiate_remembering(request.fresh_primitive().presentation_context_definition_list,
                                   all_classes)
    again = _negotiate_remembering(request.fresh_primitive().presentation_context_definition_list,
                                   list(all_classes))
    assert [cx.result for cx in first[0]] == [0x00, 0x00]
    assert all(a is b for a, b in zip(first[0], again[0], strict=True))

    dx_only = all_classes[:1]
    narrower = _negotiate_remembering(
        request.fresh_primitive().presentation_context_definition_list, dx_only)
    assert [cx.result for cx in narrower[0]] == [0x00, 0x03]
    equal_but_new = _supported(DigitalXRayImageStorageForPresentation, CTImageStorage)
    fresh = _negotiate_remembering(
        request.fresh_primitive().presentation_context_definition_list, equal_but_new)
    assert [cx.result for cx in fresh[0]] == [0x00, 0x00]
    assert not any(a is b for a, b in zip(first[0], fresh[0], strict=True))


def test_negotiation_is_reused_only_for_the_same_proposed_roles() -> None:
    request = _request()
    with_roles = build_context(DigitalXRayImageStorageForPresentation)
    with_roles.scu_role = with_roles.scp_role = True
    supported = [with_roles, build_context(CTImageStorage)]
    plain = _negotiate_remembering(
        request.fresh_primitive().presentation_context_definition_list, supported)
    assert plain[1] == []
    roles = {DigitalXRayImageStorageForPresentation: (False, True)}
    replied = _negotiate_remembering(
        request.fresh_primitive().presentation_context_definition_list, supported, roles)
    assert len(replied[1]) == 1 and replied[1][0].scp_role is True


def test_each_association_gets_its_own_lists_of_shared_items() -> None:
    request = _request()
    one, two = request.fresh_primitive(), request.fresh_primitive()
    assert isinstance(one.presentation_context_definition_list, _RememberedContexts)
    assert one.presentation_context_definition_list is not \
        two.presentation_context_definition_list
    assert one.user_information is not two.user_information
    one.calling_ae_title = "OTHER"
    assert two.calling_ae_title == "MODALITY" == request.primitive.calling_ae_title


def test_the_memo_keeps_the_most_recently_used_requests() -> None:
    memo = NegotiationMemo(capacity=2)
    for key in (b"a", b"b"):
        memo._remember(key, _request())
    assert memo._lookup(b"a") is not None
    memo._remember(b"c", _request())
    assert memo._lookup(b"b") is None
    assert memo._lookup(b"a") is not None and memo._lookup(b"c") is not None
    assert len(memo) == 2
