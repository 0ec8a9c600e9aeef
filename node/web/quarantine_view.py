"""Quarantined instances on the triage page, and the admin's accept / discard actions.

Both actions are CSRF-checked POSTs for admins only, audited by
:mod:`node.dicom.quarantine`; a refusal (e.g. accepting a copy that conflicts with a stored
instance) answers 409 with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db.models import QuarantinedInstance, Study
from node.dicom.quarantine import QuarantineError, QuarantineNotFound, accept, discard
from node.logs import log_event
from node.states import QuarantineReason, QuarantineState
from node.web.deps import CsrfAdminDep, RowId, get_context

logger = logging.getLogger(__name__)
router = APIRouter()

QUARANTINE_ACTIONS = ("accept", "discard")
QUARANTINE_LIMIT = 200
DONE_MESSAGES = {
    "quarantine-accept": "The instance is accepted into its study.",
    "quarantine-discard": "The quarantined instance is discarded.",
}


@dataclass(frozen=True)
class QuarantineRow:
    """A quarantined instance with the study it conflicts with (if stored)."""

    item: QuarantinedInstance
    study: Study | None

    @property
    def can_accept(self) -> bool:
        """Whether "accept into study" is offered (identity conflicts only)."""
        return (self.item.state == QuarantineState.QUARANTINED and self.study is not None
                and self.item.reason == QuarantineReason.PATIENT_IDENTITY_CONFLICT)


def quarantine_rows(session: Session, *, show_all: bool) -> list[QuarantineRow]:
    """Quarantined instances, newest first (resolved ones too when ``show_all``)."""
    query = select(QuarantinedInstance, Study).outerjoin(
        Study, Study.id == QuarantinedInstance.study_id)
    if not show_all:
        query = query.where(QuarantinedInstance.state == QuarantineState.QUARANTINED)
    rows = session.execute(query.order_by(QuarantinedInstance.received_at.desc(),
                                          QuarantinedInstance.id.desc())
                           .limit(QUARANTINE_LIMIT)).all()
    return [QuarantineRow(item, study) for item, study in rows]


@router.post("/admin/quarantine/{quarantine_id}/{action}")
def quarantine_action(quarantine_id: RowId, action: str, request: Request,
                      viewer: CsrfAdminDep) -> Response:
    """Accept a quarantined instance into its study, or discard it."""
    if action not in QUARANTINE_ACTIONS:
        raise HTTPException(404, "unknown action")
    ctx = get_context(request)
    resolve = accept if action == "accept" else discard
    try:
        resolve(ctx.database.sessions, ctx.store, quarantine_id, actor=viewer.username,
                user_id=viewer.id)
    except QuarantineNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except QuarantineError as exc:
        raise HTTPException(409, str(exc)) from exc
    log_event(logger, logging.INFO, "triage_action", action=f"quarantine_{action}",
              quarantine_id=quarantine_id, user_id=viewer.id)
    return RedirectResponse(f"/admin/triage?done=quarantine-{action}", status_code=303)
