"""Refusals at the DICOM edge, written to the audit trail for the admin's triage page.

Two kinds are recorded: ``association_refused`` (a connection or association request
turned away: deadline, limits, an AE title or certificate not accepted) and
``instance_refused`` (an instance over a size limit, answered 0xA700). Association
refusals repeat for as long as a peer keeps trying, so each (address, reason) is written
at most once per :data:`REPEAT_SECONDS`; every one is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import AuditEvent
from node.db.types import utcnow
from node.dicom.admission import Refusal
from node.logs import log_event

logger = logging.getLogger(__name__)

REPEAT_SECONDS = 60.0
ASSOCIATION_REFUSED = "association_refused"
INSTANCE_REFUSED = "instance_refused"
COMMITMENT_REPORT_REFUSED = "commitment_report_refused"
"""A storage commitment report from an unknown AE or naming an unknown transaction."""
REFUSAL_ACTIONS = (ASSOCIATION_REFUSED, INSTANCE_REFUSED, COMMITMENT_REPORT_REFUSED)
"""Audit actions listed under "Refused at the DICOM edge" on the triage page."""


def _write(sessions: sessionmaker[Session], event: AuditEvent) -> None:
    try:
        with sessions.begin() as session:
            session.add(event)
    except SQLAlchemyError as exc:
        log_event(logger, logging.ERROR, "refusal_not_recorded", error=type(exc).__name__)


class RefusalRecorder:
    """Logs every refusal and audits it (association refusals throttled).

    Parameters
    ----------
    sessions
        Database sessions for the audit rows.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def association(self, refusal: Refusal) -> None:
        """Record a refused connection or association request."""
        log_event(logger, logging.WARNING, ASSOCIATION_REFUSED, peer=refusal.address,
                  calling_ae=refusal.calling_ae, reason=refusal.reason)
        key = (refusal.address, refusal.reason)
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -REPEAT_SECONDS) < REPEAT_SECONDS:
                return
            self._last[key] = now
            if len(self._last) > 10_000:
                self._last = {k: v for k, v in self._last.items()
                              if now - v < REPEAT_SECONDS}
        actor = f"ae:{refusal.calling_ae}" if refusal.calling_ae else f"ip:{refusal.address}"
        _write(self.sessions, AuditEvent(
            at=utcnow(), actor=actor, action=ASSOCIATION_REFUSED, object_type="association",
            object_id=refusal.address,
            details={"reason": refusal.reason, "calling_ae": refusal.calling_ae},
        ))

    def instance(self, *, calling_ae: str, sop_instance_uid: str, status: int,
                 reason: str, details: dict[str, Any] | None = None) -> None:
        """Record an instance refused before it was stored."""
        _write(self.sessions, AuditEvent(
            at=utcnow(), actor=f"ae:{calling_ae}", action=INSTANCE_REFUSED,
            object_type="instance", object_id=sop_instance_uid,
            details={"status": f"0x{status:04X}", "reason": reason, **(details or {})},
        ))
