"""The reading room's safety nets: working copies of the text being typed, and presence.

* ``POST /studies/{id}/working-copy`` — the study page saves the findings and impression
  the user is editing (debounced, JSON, ``X-CSRF-Token``) to one row per user and report
  (:class:`~node.db.models.WorkingCopy`); the page restores it when the study is opened again;
* ``POST /studies/{id}/working-copy/discard`` — the user throws their working copy away
  explicitly (audited);
* ``POST /studies/{id}/presence`` — the study page's heartbeat; the answer names the
  colleagues who have the study open (the worklist shows them too).

Only the first save of a working copy and a discard are audited; the text itself is never
logged.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from node.db.models import Report, Study, StudyPresence, User, WorkingCopy
from node.db.types import utcnow
from node.logs import log_event
from node.web.deps import CsrfUserDep, audit, get_context

logger = logging.getLogger(__name__)
router = APIRouter()

#: Longest findings or impression kept in a working copy (characters).
MAX_TEXT_LENGTH = 20_000
#: Presence rows older than this are deleted by the next heartbeat of anyone.
PRESENCE_KEPT_SECONDS = 3600.0


class WorkingCopyIn(BaseModel):
    """The text of one report as the user is editing it."""

    report_id: int
    findings: str = Field("", max_length=MAX_TEXT_LENGTH)
    impression: str = Field("", max_length=MAX_TEXT_LENGTH)


def reader_label(display_name: str) -> str:
    """How a colleague reading a study is named: ``Dr`` and the family name."""
    family = display_name.split("=", 1)[0].split("^", 1)[0].strip()
    return f"Dr {family or display_name}"


def save_working_copy(session: Session, user_id: int, report_id: int, findings: str,
                      impression: str, now: dt.datetime) -> bool:
    """Insert or replace the user's working copy of a report.

    Returns
    -------
    bool
        ``True`` when the copy is new (the caller audits only that one).
    """
    row = session.scalar(select(WorkingCopy).where(WorkingCopy.user_id == user_id,
                                                   WorkingCopy.report_id == report_id))
    if row is None:
        session.add(WorkingCopy(user_id=user_id, report_id=report_id, findings=findings,
                                impression=impression, saved_at=now))
        return True
    row.findings, row.impression, row.saved_at = findings, impression, now
    return False


def working_copy_of(session: Session, user_id: int, report_id: int) -> WorkingCopy | None:
    """The user's working copy of a report, if any."""
    return session.scalar(select(WorkingCopy).where(WorkingCopy.user_id == user_id,
                                                    WorkingCopy.report_id == report_id))


def stale_working_copy(session: Session, user_id: int,
                       versions: Iterable[Report]) -> WorkingCopy | None:
    """The user's newest working copy of a version of the study that was superseded.

    Someone signed (or amended) that version while the user was typing; the study page
    shows the two texts side by side until the user amends or discards theirs.
    """
    superseded = {v.predecessor_id for v in versions if v.predecessor_id is not None}
    if not superseded:
        return None
    return session.scalars(
        select(WorkingCopy).where(WorkingCopy.user_id == user_id,
                                  WorkingCopy.report_id.in_(superseded))
        .order_by(WorkingCopy.saved_at.desc())
    ).first()


def forget_working_copies(session: Session, user_id: int, study_id: int) -> None:
    """Delete the user's working copies of the study's reports (after they signed or amended)."""
    session.execute(delete(WorkingCopy).where(
        WorkingCopy.user_id == user_id,
        WorkingCopy.report_id.in_(select(Report.id).where(Report.study_id == study_id))))


def readers_of(session: Session, study_ids: Iterable[int], *, exclude_user: int,
               now: dt.datetime, expiry_seconds: float) -> dict[int, list[str]]:
    """Colleagues (not ``exclude_user``) with a live heartbeat on each study."""
    ids = list(study_ids)
    if not ids:
        return {}
    since = now - dt.timedelta(seconds=expiry_seconds)
    rows = session.execute(
        select(StudyPresence.study_id, User.display_name)
        .join(User, User.id == StudyPresence.user_id)
        .where(StudyPresence.study_id.in_(ids), StudyPresence.seen_at > since,
               StudyPresence.user_id != exclude_user)
        .order_by(StudyPresence.study_id, User.display_name)
    ).all()
    readers: dict[int, list[str]] = {}
    for study_id, display_name in rows:
        readers.setdefault(study_id, []).append(reader_label(display_name))
    return readers


def _report_of_study(session: Session, study_id: int, report_id: int) -> Report:
    report = session.get(Report, report_id)
    if report is None or report.study_id != study_id:
        raise HTTPException(404, "no such report in this study")
    return report


@router.post("/studies/{study_id}/working-copy")
def save(study_id: int, body: WorkingCopyIn, request: Request,
         viewer: CsrfUserDep) -> Response:
    """Save the text the user is editing; answers the time it was saved."""
    if not viewer.is_radiologist:
        raise HTTPException(403, "only radiologists edit reports")
    ctx = get_context(request)
    now = utcnow()
    with ctx.database.sessions.begin() as session:
        _report_of_study(session, study_id, body.report_id)
        if session.scalar(select(Report.id).where(Report.predecessor_id == body.report_id,
                                                  Report.signed_by_id == viewer.id)):
            # The user signed it already; a late save must not come back as a conflict.
            return JSONResponse({"detail": "you signed this report already"}, status_code=409)
        if save_working_copy(session, viewer.id, body.report_id, body.findings,
                             body.impression, now):
            audit(session, viewer, "working_copy_started", "report", body.report_id,
                  study_id=study_id, now=now)
    return JSONResponse({"saved_at": now.isoformat()},
                        headers={"Cache-Control": "no-store"})


@router.post("/studies/{study_id}/working-copy/discard")
def discard(study_id: int, request: Request, viewer: CsrfUserDep,
            report_id: Annotated[int, Form()]) -> Response:
    """Throw the user's working copy of a report away (the user asked for it)."""
    ctx = get_context(request)
    with ctx.database.sessions.begin() as session:
        _report_of_study(session, study_id, report_id)
        copy = working_copy_of(session, viewer.id, report_id)
        if copy is not None:
            session.delete(copy)
            audit(session, viewer, "working_copy_discarded", "report", report_id,
                  study_id=study_id)
    log_event(logger, logging.INFO, "working_copy_discarded", report_id=report_id,
              user_id=viewer.id)
    return RedirectResponse(f"/studies/{study_id}?done=discarded", status_code=303)


@router.post("/studies/{study_id}/presence")
def heartbeat(study_id: int, request: Request, viewer: CsrfUserDep) -> Response:
    """Record that the user has the study open; answers who else has."""
    ctx = get_context(request)
    now = utcnow()
    with ctx.database.sessions.begin() as session:
        if session.get(Study, study_id) is None:
            raise HTTPException(404, "no such study")
        # Rows long past expiry are of no use to anyone: the table stays small.
        session.execute(delete(StudyPresence).where(
            StudyPresence.seen_at < now - dt.timedelta(seconds=PRESENCE_KEPT_SECONDS)))
        row = session.scalar(select(StudyPresence).where(StudyPresence.user_id == viewer.id,
                                                         StudyPresence.study_id == study_id))
        if row is None:
            session.add(StudyPresence(user_id=viewer.id, study_id=study_id, seen_at=now))
        else:
            row.seen_at = now
        readers = readers_of(session, [study_id], exclude_user=viewer.id, now=now,
                             expiry_seconds=ctx.settings.web.presence_expiry_seconds)
    return JSONResponse({"readers": readers.get(study_id, [])},
                        headers={"Cache-Control": "no-store"})


__all__ = [
    "forget_working_copies",
    "reader_label",
    "readers_of",
    "router",
    "save_working_copy",
    "stale_working_copy",
    "working_copy_of",
]
