"""The worklist: studies awaiting sign-off, urgent first, then oldest first.

``GET /`` renders it with filters (state, received date range, flag, text search);
``GET /worklist/rows`` renders its rows alone (the page swaps them in when the live stream
of :mod:`node.web.live` says they changed); ``GET /api/worklist/counts`` returns the count
per state (no patient data).

The study page walks the same list: :func:`adjacent_study_id` gives the study after (or
before) a study in the worklist order under the same filters, for "Sign and next" and the
next/previous keys.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from node.db.models import Instance, Report, Study
from node.db.types import utcnow
from node.states import ReportState, StudyState
from node.web.deps import PassiveUserDep, UserDep, Viewer, audit_view, get_context, render
from node.web.reading import readers_of

router = APIRouter()

#: Rows shown at most.
WORKLIST_LIMIT = 200
FLAGS = ("urgent", "rejected", "routine")


@dataclass(frozen=True)
class WorklistFilters:
    """What the worklist shows, from the query string."""

    state: str = StudyState.DRAFTED.name
    """A study state name, or ``ALL``."""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    flag: str = ""
    """``urgent``, ``rejected``, ``routine`` or empty."""
    text: str = ""

    @classmethod
    def from_query(cls, params: Any) -> WorklistFilters:
        """Parse (leniently: a bad value means no filter) the query parameters."""
        state = str(params.get("state") or StudyState.DRAFTED.name).upper()
        if state != "ALL" and state not in StudyState.__members__:
            state = StudyState.DRAFTED.name
        flag = str(params.get("flag") or "").lower()
        return cls(state=state, date_from=_date(params.get("from")),
                   date_to=_date(params.get("to")), flag=flag if flag in FLAGS else "",
                   text=str(params.get("q") or "").strip()[:64])

    @classmethod
    def from_query_string(cls, query: str) -> WorklistFilters:
        """Parse the filters carried from the worklist to the study page (``wl=``)."""
        values = parse_qs(query[:1024], keep_blank_values=False)
        return cls.from_query({key: items[0] for key, items in values.items() if items})

    def query_string(self) -> str:
        """The filters as a query string (without ``?``), defaults left out."""
        params: dict[str, str] = {}
        if self.state != StudyState.DRAFTED.name:
            params["state"] = self.state
        if self.flag:
            params["flag"] = self.flag
        if self.date_from is not None:
            params["from"] = self.date_from.isoformat()
        if self.date_to is not None:
            params["to"] = self.date_to.isoformat()
        if self.text:
            params["q"] = self.text
        return urlencode(params)


def _date(value: object) -> dt.date | None:
    try:
        return dt.date.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _day_start(day: dt.date) -> dt.datetime:
    """Local midnight of ``day`` as an aware timestamp."""
    return dt.datetime.combine(day, dt.time()).astimezone()


@dataclass(frozen=True)
class WorklistRow:
    """One study line of the worklist."""

    study: Study
    report: Report | None
    images: int


def latest_reports(session: Session, study_ids: list[int]) -> dict[int, Report]:
    """The newest report version of each study."""
    if not study_ids:
        return {}
    newest = (select(func.max(Report.id)).where(Report.study_id.in_(study_ids))
              .group_by(Report.study_id))
    reports = session.scalars(select(Report).where(Report.id.in_(newest))).all()
    return {r.study_id: r for r in reports}


def filtered_studies(filters: WorklistFilters) -> Select[Study]:
    """The studies matching ``filters``, in no order."""
    query = select(Study)
    if filters.state != "ALL":
        query = query.where(Study.state == StudyState[filters.state])
    if filters.date_from is not None:
        query = query.where(Study.first_received_at >= _day_start(filters.date_from))
    if filters.date_to is not None:
        query = query.where(
            Study.first_received_at < _day_start(filters.date_to + dt.timedelta(days=1)))
    if filters.flag == "urgent":
        query = query.where(Study.urgent.is_(True))
    elif filters.flag == "routine":
        query = query.where(Study.urgent.is_(False))
    elif filters.flag == "rejected":
        rejected = select(Report.study_id).where(
            and_(Report.state == ReportState.DRAFT, Report.rejected_at.is_not(None)))
        query = query.where(Study.id.in_(rejected))
    if filters.text:
        # A literal substring: ``%`` and ``_`` typed by the user match only themselves.
        needle = filters.text.lower()
        query = query.where(or_(
            func.lower(Study.patient_name).contains(needle, autoescape=True),
            func.lower(Study.patient_id).contains(needle, autoescape=True),
            func.lower(Study.accession_number).contains(needle, autoescape=True)))
    return query


def worklist_query(filters: WorklistFilters) -> Select[Study]:
    """The studies matching ``filters``, urgent first, then oldest first."""
    return filtered_studies(filters).order_by(
        Study.urgent.desc(), Study.first_received_at.asc(), Study.id.asc()
    ).limit(WORKLIST_LIMIT)


def adjacent_study_id(session: Session, filters: WorklistFilters, study: Study, *,
                      forward: bool) -> int | None:
    """The study after (``forward``) or before ``study`` in the worklist order.

    The order is the worklist's (urgent first, then oldest, then by id), restricted to
    ``filters``; ``study`` itself need not match them any more (it was just signed), its
    place in the order is what counts.

    Returns
    -------
    int or None
        The id of that study, or ``None`` at the end (or start) of the list.
    """
    urgent, received, study_id = study.urgent, study.first_received_at, study.id
    if forward:
        same = and_(Study.urgent.is_(urgent), or_(
            Study.first_received_at > received,
            and_(Study.first_received_at == received, Study.id > study_id)))
        condition = or_(same, Study.urgent.is_(False)) if urgent else same
        order = (Study.urgent.desc(), Study.first_received_at.asc(), Study.id.asc())
    else:
        same = and_(Study.urgent.is_(urgent), or_(
            Study.first_received_at < received,
            and_(Study.first_received_at == received, Study.id < study_id)))
        condition = same if urgent else or_(same, Study.urgent.is_(True))
        order = (Study.urgent.asc(), Study.first_received_at.desc(), Study.id.desc())
    query = filtered_studies(filters).where(condition).order_by(*order).limit(1)
    return session.scalar(query.with_only_columns(Study.id))


def worklist_rows(session: Session, filters: WorklistFilters) -> list[WorklistRow]:
    """Rows of the worklist for ``filters``."""
    studies = session.scalars(worklist_query(filters)).all()
    ids = [s.id for s in studies]
    reports = latest_reports(session, ids)
    counts = dict(session.execute(
        select(Instance.study_id, func.count(Instance.id))
        .where(Instance.study_id.in_(ids)).group_by(Instance.study_id)).all()) if ids else {}
    return [WorklistRow(s, reports.get(s.id), int(counts.get(s.id, 0))) for s in studies]


def worklist_digest(rows: list[WorklistRow], counts: dict[str, int],
                    readers: dict[int, list[str]]) -> str:
    """A digest of what a worklist shows: it changes when any row, flag, reader or count
    does (the live worklist compares digests; no patient data can be read from one)."""
    shown = [(
        row.study.id, row.study.state.name, row.study.urgent,
        list(row.study.urgent_findings or []), row.images,
        None if row.report is None else (
            row.report.id, row.report.state.name, row.report.degenerate,
            row.report.rejected_at is not None),
        readers.get(row.study.id, []),
    ) for row in rows]
    encoded = json.dumps([shown, counts], sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:32]


def state_counts(session: Session) -> dict[str, int]:
    """Studies per state (every state, zeros included), plus urgent and rejected drafts."""
    counts = {state.name: 0 for state in StudyState}
    for state, count in session.execute(
            select(Study.state, func.count(Study.id)).group_by(Study.state)):
        counts[state.name] = int(count)
    counts["URGENT"] = int(session.scalar(select(func.count(Study.id)).where(
        Study.state == StudyState.DRAFTED, Study.urgent.is_(True))) or 0)
    counts["REJECTED"] = int(session.scalar(
        select(func.count(func.distinct(Report.study_id)))
        .join(Study, Study.id == Report.study_id)
        .where(Study.state == StudyState.DRAFTED, Report.state == ReportState.DRAFT,
               Report.rejected_at.is_not(None))) or 0)
    return counts


def _worklist_context(request: Request, viewer: Viewer) -> dict[str, Any]:
    """Rows, counts, readers and digest of the worklist the query asks for (audited)."""
    ctx = get_context(request)
    filters = WorklistFilters.from_query(request.query_params)
    now = utcnow()
    with ctx.database.sessions() as session:
        rows = worklist_rows(session, filters)
        counts = state_counts(session)
        readers = readers_of(session, [row.study.id for row in rows], exclude_user=viewer.id,
                             now=now,
                             expiry_seconds=ctx.settings.web.presence_expiry_seconds)
    audit_view(ctx.database, viewer, "worklist_viewed", "worklist",
               details={"state": filters.state, "rows": len(rows)})
    return {"rows": rows, "counts": counts, "filters": filters, "now": now,
            "limit": WORKLIST_LIMIT, "readers": readers,
            "version": worklist_digest(rows, counts, readers)}


@router.get("/")
def worklist(request: Request, viewer: UserDep) -> Response:
    """The worklist page."""
    context = _worklist_context(request, viewer)
    return render(request, "worklist.html", {
        **context, "states": list(StudyState), "nav": "worklist",
        "done": request.query_params.get("done", ""),
    })


@router.get("/worklist/rows")
def worklist_rows_fragment(request: Request, viewer: PassiveUserDep) -> Response:
    """The worklist's rows alone (HTML), for the page to swap in when they changed."""
    return render(request, "worklist_rows.html", _worklist_context(request, viewer))


@router.get("/api/worklist/counts")
def worklist_counts(request: Request, viewer: PassiveUserDep) -> Response:
    """Studies per state, as JSON (polled by the worklist page)."""
    ctx = get_context(request)
    with ctx.database.sessions() as session:
        counts = state_counts(session)
    return JSONResponse({"counts": counts, "at": utcnow().isoformat()},
                        headers={"Cache-Control": "no-store"})
