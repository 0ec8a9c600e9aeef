"""What a peer answered to the node's association request, as the peer sent it.

pynetdicom 3.0 can report a rejected association as a failed connection. Its reading
thread receives the A-ASSOCIATE-RJ and closes the socket; when that happens before the
requesting thread has checked that the connection opened, the requesting thread finds
the socket closed, aborts, and never reads the answer (``is_rejected`` stays ``False``
and ``acceptor.primitive`` ``None``). A peer that answers at once, such as Orthanc on
the same host refusing an unknown calling AE title, is misreported this way in about
one rejection in thirty.

:class:`AnswerWatch` listens to the association's own events: whether the TCP
connection opened, and any A-ASSOCIATE-RJ as the reading thread decodes it. The
sending side then tells a refusal (which needs an administrator) from an unreachable
peer (which may come back by itself), and says why the peer refused. The proposed
upstream fix (the requesting thread looks for a queued answer before it aborts) is
``docs/upstream/pynetdicom-3.0.4-rejection-race.patch``.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.events import EventHandlerType
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import A_ASSOCIATE

#: A-ASSOCIATE result values that mean the peer rejected the request (PS3.8 9.3.4).
_REJECTED = (0x01, 0x02)


class AnswerWatch:
    """Records, for one association request, the connection and a rejection."""

    def __init__(self) -> None:
        self.opened = False
        self._rejection: A_ASSOCIATE | None = None

    @property
    def handlers(self) -> list[EventHandlerType]:
        """The event handlers to pass to ``AE.associate(evt_handlers=...)``."""
        return [(evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_PDU_RECV, self._on_pdu)]

    def rejection(self, assoc: Association) -> A_ASSOCIATE | None:
        """The peer's A-ASSOCIATE reject, or ``None`` when it sent none.

        Parameters
        ----------
        assoc
            The association the handlers were bound to, after ``associate`` returned.
        """
        answer = assoc.acceptor.primitive
        if isinstance(answer, A_ASSOCIATE) and answer.result in _REJECTED:
            return answer
        return self._rejection

    def _on_open(self, _event: Any) -> None:
        self.opened = True

    def _on_pdu(self, event: Any) -> None:
        if self._rejection is None and isinstance(event.pdu, A_ASSOCIATE_RJ):
            try:
                self._rejection = event.pdu.to_primitive()
            except ValueError:  # values outside PS3.8: not a rejection that can be named
                return
