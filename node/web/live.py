"""The live worklist: the node tells an open worklist page when its rows change.

* ``GET /api/worklist/events?<filters>`` — a Server-Sent Events stream. Every
  ``[web] live_poll_seconds`` the node computes a digest of what the worklist with these
  filters shows (rows, their states and flags, who has them open, the counts per state) and
  sends an ``worklist`` event when it changed. The event holds the digest and the counts per
  state only, never patient data: the page then fetches the rows (``GET /worklist/rows``,
  an ordinary authenticated and audited page request) and swaps them in;
* ``GET /api/worklist/state?<filters>`` — the same digest and counts as JSON, which the page
  polls instead when it cannot keep a stream open (a proxy that buffers, too many streams).

Streams need a login like any page (401 otherwise) and are bounded: at most
``[web] live_streams_per_user`` at once per user (429 beyond), each ending after
``live_stream_max_seconds`` (the browser reconnects, and its login is checked again). The
login is also checked every ``live_login_check_seconds`` while the stream is open; an ended
or expired login ends the stream with a ``logout`` event. Neither the stream, nor the digest,
nor the rows the page fetches count as the user's activity: an open worklist never keeps an
idle login alive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from node.db.models import User, WebSession
from node.db.types import utcnow
from node.logs import log_event
from node.web.deps import PassiveUserDep, Viewer, WebContext, get_context, session_lifetimes
from node.web.reading import readers_of
from node.web.worklist import WorklistFilters, state_counts, worklist_digest, worklist_rows

logger = logging.getLogger(__name__)
router = APIRouter()

#: A comment line is sent at least this often, so that a closed connection is noticed.
KEEPALIVE_SECONDS = 10.0
#: What the browser waits before reconnecting after a stream ends (milliseconds).
RECONNECT_MS = 1000


@dataclass(frozen=True)
class WorklistSnapshot:
    """What an open worklist needs to know: whether its rows changed, and the counts."""

    version: str
    """A digest of the rows the filters show (no patient data can be read from it)."""
    counts: dict[str, int]

    def as_json(self) -> dict[str, Any]:
        """The snapshot as sent to the page."""
        return {"version": self.version, "counts": self.counts}


def worklist_snapshot(ctx: WebContext, filters: WorklistFilters,
                      viewer_id: int) -> WorklistSnapshot:
    """Digest the worklist that ``filters`` show to the user ``viewer_id``."""
    with ctx.database.sessions() as session:
        rows = worklist_rows(session, filters)
        counts = state_counts(session)
        readers = readers_of(session, [row.study.id for row in rows], exclude_user=viewer_id,
                             now=utcnow(),
                             expiry_seconds=ctx.settings.web.presence_expiry_seconds)
    return WorklistSnapshot(worklist_digest(rows, counts, readers), counts)


def login_is_current(ctx: WebContext, viewer: Viewer) -> bool:
    """Whether the login a stream was opened with is still valid (without touching it)."""
    idle, _ = session_lifetimes(ctx.settings)
    now = utcnow()
    with ctx.database.sessions() as session:
        row = session.execute(
            select(WebSession.ended_at, WebSession.expires_at, WebSession.last_seen_at,
                   User.active)
            .join(User, User.id == WebSession.user_id)
            .where(WebSession.id == viewer.web_session_id)).first()
    if row is None:
        return False
    ended_at, expires_at, last_seen_at, active = row
    return bool(ended_at is None and active and expires_at > now
                and last_seen_at + idle > now)


class StreamSlots:
    """How many live streams each user holds; refuses beyond the limit."""

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()

    def acquire(self, user_id: int) -> bool:
        """Take a slot for ``user_id``; ``False`` when the user holds the maximum."""
        with self._lock:
            held = self._held.get(user_id, 0)
            if held >= self.per_user:
                return False
            self._held[user_id] = held + 1
            return True

    def release(self, user_id: int) -> None:
        """Give a slot back."""
        with self._lock:
            held = self._held.get(user_id, 0) - 1
            if held > 0:
                self._held[user_id] = held
            else:
                self._held.pop(user_id, None)

    def held(self, user_id: int) -> int:
        """Slots ``user_id`` holds now."""
        with self._lock:
            return self._held.get(user_id, 0)


def stream_slots(request: Request) -> StreamSlots:
    """The app's stream slots (made on first use)."""
    state = request.app.state
    slots: StreamSlots | None = getattr(state, "live_stream_slots", None)
    if slots is None:
        slots = StreamSlots(get_context(request).settings.web.live_streams_per_user)
        state.live_stream_slots = slots
    return slots


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _events(ctx: WebContext, viewer: Viewer, filters: WorklistFilters,
                  slots: StreamSlots) -> AsyncIterator[str]:
    web = ctx.settings.web
    started = last_sent = time.monotonic()
    next_login_check = started + web.live_login_check_seconds
    version: str | None = None
    try:
        yield f"retry: {RECONNECT_MS}\n\n"
        while True:
            now = time.monotonic()
            if now >= next_login_check:
                next_login_check = now + web.live_login_check_seconds
                if not await run_in_threadpool(login_is_current, ctx, viewer):
                    yield _event("logout", {})
                    return
            snapshot = await run_in_threadpool(worklist_snapshot, ctx, filters, viewer.id)
            if snapshot.version != version:
                version = snapshot.version
                last_sent = now
                yield _event("worklist", snapshot.as_json())
            elif now - last_sent >= KEEPALIVE_SECONDS:
                last_sent = now
                yield ": keep-alive\n\n"
            if now - started >= web.live_stream_max_seconds:
                return
            await asyncio.sleep(web.live_poll_seconds)
    finally:
        slots.release(viewer.id)


@router.get("/api/worklist/events")
def worklist_events(request: Request, viewer: PassiveUserDep) -> Response:
    """The live worklist stream (Server-Sent Events) for the filters in the query."""
    ctx = get_context(request)
    slots = stream_slots(request)
    if not slots.acquire(viewer.id):
        log_event(logger, logging.WARNING, "live_streams_refused", user_id=viewer.id,
                  held=slots.held(viewer.id))
        return JSONResponse({"detail": "too many live worklists open; poll instead"},
                            status_code=429, headers={"Retry-After": "30"})
    filters = WorklistFilters.from_query(request.query_params)
    return StreamingResponse(_events(ctx, viewer, filters, slots),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/api/worklist/state")
def worklist_state(request: Request, viewer: PassiveUserDep) -> Response:
    """The digest and counts of the worklist for the filters in the query, as JSON."""
    ctx = get_context(request)
    filters = WorklistFilters.from_query(request.query_params)
    snapshot = worklist_snapshot(ctx, filters, viewer.id)
    return JSONResponse({**snapshot.as_json(), "at": utcnow().isoformat()},
                        headers={"Cache-Control": "no-store"})


__all__ = [
    "StreamSlots",
    "WorklistSnapshot",
    "login_is_current",
    "router",
    "worklist_snapshot",
]
