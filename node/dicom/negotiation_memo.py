"""Association requests negotiated once per distinct request (pynetdicom 3.0).

A sender proposes the same A-ASSOCIATE-RQ every time it connects: DCMTK's ``storescu``
offers about 120 presentation contexts, and pynetdicom decodes them, turns them into a
primitive, negotiates them against the listener's 171 supported contexts and encodes the
A-ASSOCIATE-AC, all in Python, for every association: about half of the listener's CPU
for an association that carries one small instance.

:class:`NegotiationMemo` keeps, for each distinct request (its exact bytes, at most
:data:`MEMO_CAPACITY` of them, least recently used first out):

1. the decoded A-ASSOCIATE-RQ and its primitive; each association gets its own copy of
   the primitive (its lists copied, the presentation contexts and user information items
   in them shared: an acceptor only reads them);
2. the negotiated presentation contexts and role selection replies, reused only when the
   association negotiates against the very same supported context objects and proposed
   roles (:func:`_negotiate_remembering`);
3. the encoded A-ASSOCIATE-AC, sent again only when the accept primitive pynetdicom built
   matches the remembered one field by field: the same negotiated context objects, AE
   titles, result and user information items (:func:`_send_accept_remembering`).

Requests whose negotiation runs user code or depends on more than the request (user
identity, asynchronous operations window, SOP class extended and common extended
negotiation) and requests over :data:`MAX_MEMO_REQUEST_BYTES` are negotiated as before,
every time. Everything pynetdicom checks per association (the Called and Calling AE
titles, the association limit, the protocol version) still runs for every association;
the events it triggers (``EVT_DATA_RECV``, ``EVT_PDU_RECV``, ``EVT_PDU_SENT``) still fire.

The hooks are installed process-wide when the first memo is made (:func:`install`) but act
only for associations bound with :meth:`NegotiationMemo.bind`; every other pynetdicom
association in the process goes through pynetdicom's own code.
``tests/unit/test_negotiation_memo.py`` fails when the upstream functions replaced here
change.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import acse, dul, evt, fsm
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext

#: Distinct association requests remembered per listener.
MEMO_CAPACITY = 64
#: Larger requests are never remembered (a real one is a few kilobytes).
MAX_MEMO_REQUEST_BYTES = 64 * 1024
#: User information items whose negotiation calls user handlers or answers per association.
PER_ASSOCIATION_ITEMS = (
    UserIdentityNegotiation,
    AsynchronousOperationsWindowNegotiation,
    SOPClassExtendedNegotiation,
    SOPClassCommonExtendedNegotiation,
)
_ASSOCIATE_RQ_TYPE = b"\x01"

_acse_module: Any = acse  # its imported names are not re-exported for type checkers
_original_negotiate_as_acceptor: Callable[..., Any] = _acse_module.negotiate_as_acceptor
_original_send_accept_action: tuple[str, Callable[[Any], str], str] = cast(
    tuple[str, Callable[[Any], str], str], fsm.ACTIONS["AE-7"])
_install_lock = threading.Lock()


@dataclass(frozen=True)
class _Negotiated:
    """One negotiation's inputs and results."""

    supported: tuple[PresentationContext, ...]
    roles: dict[Any, tuple[bool | None, bool | None]]
    contexts: tuple[PresentationContext, ...]
    context_ids: frozenset[int]
    reply_roles: tuple[Any, ...]


@dataclass(frozen=True)
class _Accept:
    """An encoded A-ASSOCIATE-AC and what its primitive held."""

    fingerprint: tuple[Any, ...]
    pdu: A_ASSOCIATE_AC


class _Request:
    """A remembered A-ASSOCIATE-RQ: its PDU, its primitive and what followed from them."""

    def __init__(self, pdu: A_ASSOCIATE_RQ, primitive: A_ASSOCIATE) -> None:
        self.pdu = pdu
        self.primitive = primitive
        self.negotiated: _Negotiated | None = None
        self.accept: _Accept | None = None

    def fresh_primitive(self) -> A_ASSOCIATE:
        """A copy of the request primitive for one association, marked with this entry."""
        primitive = copy.copy(self.primitive)
        primitive._presentation_context_definition_list = _RememberedContexts(
            self.primitive.presentation_context_definition_list, self)
        primitive._user_information = list(self.primitive.user_information)
        return primitive


class _RememberedContexts(list):  # type: ignore[type-arg]
    """The proposed presentation contexts of a remembered request, pointing back to it."""

    def __init__(self, contexts: list[PresentationContext], request: _Request) -> None:
        super().__init__(contexts)
        self.request = request


def _is_memoizable(primitive: A_ASSOCIATE) -> bool:
    return not any(isinstance(item, PER_ASSOCIATION_ITEMS)
                   for item in primitive.user_information)


class NegotiationMemo:
    """The association requests one listener has negotiated, with their answers.

    Parameters
    ----------
    capacity
        How many distinct requests are kept.
    """

    def __init__(self, capacity: int = MEMO_CAPACITY) -> None:
        install()
        self.capacity = capacity
        self._requests: OrderedDict[bytes, _Request] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._requests)

    def _lookup(self, data: bytes) -> _Request | None:
        with self._lock:
            request = self._requests.get(data)
            if request is not None:
                self._requests.move_to_end(data)
            return request

    def _remember(self, data: bytes, request: _Request) -> None:
        with self._lock:
            self._requests[data] = request
            self._requests.move_to_end(data)
            while len(self._requests) > self.capacity:
                self._requests.popitem(last=False)

    def bind(self, assoc: Association) -> None:
        """Decode ``assoc``'s association request through this memo.

        Call before the association's threads start.
        """
        provider = assoc.dul
        decode: Callable[[bytearray], tuple[Any, str]] = provider._decode_pdu
        event_name = dul._PDU_TYPES[_ASSOCIATE_RQ_TYPE][1]

        def decode_remembering(bytestream: bytearray) -> tuple[Any, str]:
            if (bytestream[:1] != _ASSOCIATE_RQ_TYPE
                    or len(bytestream) > MAX_MEMO_REQUEST_BYTES):
                return decode(bytestream)
            data = bytes(bytestream)
            request = self._lookup(data)
            if request is None:
                pdu, event = decode(bytestream)
                primitive = pdu.to_primitive()
                if not _is_memoizable(primitive):
                    pdu.to_primitive = lambda: primitive  # AE-6 asks for it
                    return pdu, event
                request = _Request(pdu, primitive)
                pdu.to_primitive = request.fresh_primitive
                self._remember(data, request)
                return pdu, event
            evt.trigger(assoc, evt.EVT_DATA_RECV, {"data": data})
            evt.trigger(assoc, evt.EVT_PDU_RECV, {"pdu": request.pdu})
            return request.pdu, event_name

        provider._decode_pdu = decode_remembering  # type: ignore[method-assign]


def _remembered_request(contexts: Any) -> _Request | None:
    return contexts.request if isinstance(contexts, _RememberedContexts) else None


def _same_objects(left: tuple[Any, ...], right: list[Any]) -> bool:
    return len(left) == len(right) and all(a is b for a, b in zip(left, right, strict=True))


def _negotiate_remembering(rq_contexts: Any, ac_contexts: Any,
                           roles: Any = None) -> tuple[list[Any], list[Any]]:
    """``presentation.negotiate_as_acceptor``, answered from the memo when the request,
    the supported context objects and the proposed roles are those it negotiated."""
    request = _remembered_request(rq_contexts)
    if request is None:
        return cast(tuple[list[Any], list[Any]],
                    _original_negotiate_as_acceptor(rq_contexts, ac_contexts, roles))
    proposed_roles = dict(roles or {})
    negotiated = request.negotiated
    if (negotiated is not None and negotiated.roles == proposed_roles
            and _same_objects(negotiated.supported, ac_contexts)):
        return list(negotiated.contexts), list(negotiated.reply_roles)
    contexts, reply_roles = _original_negotiate_as_acceptor(rq_contexts, ac_contexts, roles)
    request.negotiated = _Negotiated(
        tuple(ac_contexts), proposed_roles, tuple(contexts),
        frozenset(map(id, contexts)), tuple(reply_roles))
    return contexts, reply_roles


def _accept_fingerprint(primitive: A_ASSOCIATE, request: _Request) -> tuple[Any, ...] | None:
    """What the A-ASSOCIATE-AC of ``primitive`` is made of, or ``None`` when its contexts
    are not exactly the remembered negotiation's objects."""
    negotiated = request.negotiated
    results = primitive.presentation_context_definition_results_list
    if (negotiated is None or len(results) != len(negotiated.context_ids)
            or {id(cx) for cx in results} != negotiated.context_ids):
        return None
    return (
        primitive.application_context_name, primitive.calling_ae_title,
        primitive.called_ae_title, primitive.result, primitive.result_source,
        tuple(id(cx) for cx in results),
        tuple((type(item), sorted(vars(item).items()))
              for item in primitive.user_information),
    )


def _send_accept_remembering(provider: dul.DULServiceProvider) -> str:
    """FSM action AE-7 (send the A-ASSOCIATE-AC), sending the remembered encoding when the
    accept primitive is the one it was encoded from."""
    assoc = provider.assoc
    requested = getattr(assoc.requestor, "primitive", None)
    request = _remembered_request(
        getattr(requested, "presentation_context_definition_list", None))
    description, send_accept, next_state = _original_send_accept_action
    if request is None:
        return send_accept(provider)
    primitive = cast(A_ASSOCIATE, provider.to_provider_queue.get(False))
    fingerprint = _accept_fingerprint(primitive, request)
    accept = request.accept
    if fingerprint is not None and accept is not None and accept.fingerprint == fingerprint:
        provider._send(accept.pdu)
        return next_state
    pdu: Any = A_ASSOCIATE_AC(primitive)
    encoded = pdu.encode()
    pdu.encode = lambda: encoded  # sent again as encoded once
    if fingerprint is not None:
        request.accept = _Accept(fingerprint, pdu)
    provider._send(pdu)
    return next_state


def install() -> None:
    """Route negotiation and the A-ASSOCIATE-AC through the memo (idempotent); both fall
    back to pynetdicom's own code for associations no memo is bound to."""
    with _install_lock:
        if _acse_module.negotiate_as_acceptor is _negotiate_remembering:
            return
        _acse_module.negotiate_as_acceptor = _negotiate_remembering
        description, _, next_state = _original_send_accept_action
        actions: dict[str, Any] = fsm.ACTIONS
        actions["AE-7"] = (description, _send_accept_remembering, next_state)
