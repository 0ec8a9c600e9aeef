"""What every route needs: the app's services, the signed-in user, roles, CSRF, audit, pages.

Roles are enforced here, server-side, as FastAPI dependencies:

* :func:`require_user` — any active person (radiologist or admin; never a worker's
  service account, see :mod:`node.web.service_auth`);
* :func:`require_admin` — admins only (triage, monitoring, configuration);
* :func:`require_csrf` — on every POST: the form's ``csrf_token`` (or the
  ``X-CSRF-Token`` header) must match the signed-in user's login.

A request without a valid login raises :class:`LoginRequired` (a redirect to the login
page for a browser, 401 otherwise); a user without the role raises :class:`Forbidden` (403).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Form, Path, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from node.config import Settings
from node.db.models import AuditEvent, User, WebSession
from node.db.types import utcnow
from node.logs import log_event
from node.states import Role
from node.storage import InstanceStore
from node.web.imaging import ImageRenderer
from node.web.security import SESSION_COOKIE, CookieSigner, token_hash
from node.web.throttle import LoginThrottle

if TYPE_CHECKING:
    from node.db.engine import Database
    from node.exports.service import ExportService
    from node.jobs.queue import WorkQueue
    from node.operations import OperationsMonitor

logger = logging.getLogger(__name__)

#: ``last_seen_at`` is written at most this often per login.
TOUCH_INTERVAL = dt.timedelta(seconds=60)

#: The largest row id (a signed 64-bit integer); larger ids in a URL or form answer 400.
MAX_ROW_ID = 2**63 - 1

RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
"""A route parameter: a database row id taken from the URL path."""
FormRowId = Annotated[int, Form(ge=1, le=MAX_ROW_ID)]
"""A form field: a database row id."""


class LoginRequired(Exception):
    """The request needs a signed-in user."""


class Forbidden(Exception):
    """The signed-in user lacks the role, or the request failed its CSRF check."""

    def __init__(self, message: str = "You do not have access to this page.") -> None:
        super().__init__(message)
        self.message = message


@dataclass
class WebContext:
    """The services the web app works with (one per app)."""

    settings: Settings
    database: Database
    store: InstanceStore
    exporter: ExportService | None
    work_queue: WorkQueue | None
    signer: CookieSigner
    throttle: LoginThrottle
    templates: Jinja2Templates
    renderer: ImageRenderer
    operations: OperationsMonitor


@dataclass(frozen=True)
class Viewer:
    """The signed-in user of a request (a snapshot, safe to use outside the DB session)."""

    id: int
    username: str
    display_name: str
    role: Role
    web_session_id: int
    csrf_token: str
    token_id: int | None = None
    """The personal bearer token the request came with (``None``: the login cookie).
    Such a viewer exists only on DICOMweb routes; pages refuse it."""

    @property
    def is_admin(self) -> bool:
        """Whether the user may reach the admin pages."""
        return self.role == Role.ADMIN

    @property
    def is_radiologist(self) -> bool:
        """Whether the user may sign, amend and reject reports."""
        return self.role == Role.RADIOLOGIST


def get_context(request: Request) -> WebContext:
    """The app's :class:`WebContext`."""
    ctx: WebContext = request.app.state.ctx
    return ctx


def client_address(request: Request) -> str:
    """The client's address (the proxy's when behind one; no header is trusted)."""
    return request.client.host if request.client else "unknown"


def session_lifetimes(settings: Settings) -> tuple[dt.timedelta, dt.timedelta]:
    """Idle and absolute lifetime of a login."""
    return (dt.timedelta(minutes=settings.web.session_idle_minutes),
            dt.timedelta(hours=settings.web.session_max_hours))


def current_viewer(request: Request) -> Viewer | None:
    """The signed-in user of the request, or ``None`` (the result is kept on the request)."""
    if hasattr(request.state, "viewer"):
        cached: Viewer | None = request.state.viewer
        return cached
    ctx = get_context(request)
    idle, lifetime = session_lifetimes(ctx.settings)
    token = ctx.signer.read_session(request.cookies.get(SESSION_COOKIE),
                                    lifetime.total_seconds())
    viewer: Viewer | None = None
    if token is not None:
        now = utcnow()
        with ctx.database.sessions() as session:
            row = session.execute(
                select(WebSession, User)
                .join(User, User.id == WebSession.user_id)
                .where(WebSession.token_hash == token_hash(token),
                       WebSession.ended_at.is_(None))
            ).first()
        change: dict[str, dt.datetime] = {}
        if row is not None:
            web_session, user = row
            expired = (web_session.expires_at <= now
                       or web_session.last_seen_at + idle <= now)
            if expired or not user.active:
                change = {"ended_at": now}
            else:
                passive = getattr(request.state, "passive", False)
                if now - web_session.last_seen_at >= TOUCH_INTERVAL and not passive:
                    change = {"last_seen_at": now}
                viewer = Viewer(user.id, user.username, user.display_name, user.role,
                                web_session.id, ctx.signer.csrf_token("session", token))
            if change:
                _update_session(ctx.database, web_session.id, change)
    request.state.viewer = viewer
    return viewer


def _update_session(database: Database, web_session_id: int,
                    values: Mapping[str, dt.datetime]) -> None:
    """End or touch a login; a full database volume skips the touch (the login goes on)
    but an expired login is refused all the same (it is checked on every request)."""
    try:
        with database.sessions.begin() as session:
            session.execute(update(WebSession).where(WebSession.id == web_session_id)
                            .values(**values))
    except DBAPIError as exc:
        log_event(logger, logging.WARNING, "web_session_unrecorded",
                  error=type(exc.orig or exc).__name__)


def require_person(request: Request) -> Viewer:
    """Any signed-in person: radiologist, admin or uploader (their account page)."""
    viewer = current_viewer(request)
    if viewer is None or viewer.token_id is not None:
        raise LoginRequired()
    if viewer.role is Role.WORKER:
        raise Forbidden("Worker accounts have no access to the web pages.")
    return viewer


def require_user(request: Request) -> Viewer:
    """Any signed-in reader: a radiologist or an admin."""
    viewer = require_person(request)
    if viewer.role is Role.UPLOADER:
        raise Forbidden("Uploader accounts store images over STOW-RS and read nothing; "
                        "their tokens are on the account page (/account).")
    return viewer


UserDep = Annotated[Viewer, Depends(require_user)]
"""A route parameter: the signed-in user (any role)."""


def require_user_passively(request: Request) -> Viewer:
    """Any signed-in, active user, on a request the page makes by itself (a live refresh):
    it does not count as the user's activity, so it never keeps an idle login alive."""
    if not hasattr(request.state, "viewer"):
        request.state.passive = True
    return require_user(request)


PassiveUserDep = Annotated[Viewer, Depends(require_user_passively)]
"""A route parameter: the signed-in user, on a background request of a page."""


def require_admin(viewer: UserDep) -> Viewer:
    """A signed-in admin."""
    if not viewer.is_admin:
        raise Forbidden("This page is for administrators.")
    return viewer


def same_origin(request: Request) -> bool:
    """Whether the request's ``Origin`` (when sent) is this node's own."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not sent by this client; the CSRF token still decides
    if origin == "null":
        return False
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/") == host


async def require_csrf(request: Request, viewer: UserDep) -> Viewer:
    """A signed-in user whose POST carries their CSRF token and comes from this origin."""
    return await _checked_csrf(request, viewer)


async def require_person_csrf(request: Request,
                              viewer: Annotated[Viewer, Depends(require_person)]) -> Viewer:
    """A signed-in person (uploaders too) whose POST passes the CSRF check."""
    return await _checked_csrf(request, viewer)


async def _checked_csrf(request: Request, viewer: Viewer) -> Viewer:
    presented = request.headers.get("x-csrf-token")
    if presented is None:
        form = await request.form()
        value = form.get("csrf_token")
        presented = value if isinstance(value, str) else None
    if not same_origin(request) or presented is None or presented != viewer.csrf_token:
        raise Forbidden("The form has expired or did not come from this site. "
                        "Reload the page and try again.")
    return viewer


CsrfUserDep = Annotated[Viewer, Depends(require_csrf)]
"""A route parameter: the signed-in user, on a POST that passed the CSRF check."""


async def require_admin_csrf(viewer: CsrfUserDep) -> Viewer:
    """A signed-in admin whose POST passes the CSRF check."""
    if not viewer.is_admin:
        raise Forbidden("This is for administrators.")
    return viewer


AdminDep = Annotated[Viewer, Depends(require_admin)]
"""A route parameter: the signed-in admin."""
CsrfAdminDep = Annotated[Viewer, Depends(require_admin_csrf)]
"""A route parameter: the signed-in admin, on a POST that passed the CSRF check."""


def audit(session: Session, viewer: Viewer, action: str, object_type: str,
          object_id: object = None, *, study_id: int | None = None,
          details: Mapping[str, Any] | None = None, now: dt.datetime | None = None) -> None:
    """Add an audit event by the signed-in user (in the caller's transaction)."""
    session.add(AuditEvent(
        at=now or utcnow(), actor=viewer.username, user_id=viewer.id, action=action,
        object_type=object_type, object_id=None if object_id is None else str(object_id),
        study_id=study_id, details=dict(details) if details else None,
    ))


def audit_view(database: Database, viewer: Viewer, action: str, object_type: str,
               object_id: object = None, *, study_id: int | None = None,
               details: Mapping[str, Any] | None = None) -> None:
    """Audit a read (a page or image shown) in a short transaction of its own.

    A read is served even when its audit event cannot be written (the database's volume
    is full): the event then goes to the log at ERROR as ``audit_unrecorded`` with the
    user, action and object ids (no patient data), so the access stays on record and the
    failure is visible to monitoring. Writes (sign-off, amendments, admin actions) keep
    their audit event in their own transaction: without it they do not happen.
    """
    try:
        with database.sessions.begin() as session:
            audit(session, viewer, action, object_type, object_id, study_id=study_id,
                  details=details)
    except DBAPIError as exc:
        log_event(logger, logging.ERROR, "audit_unrecorded", action=action,
                  user_id=viewer.id, object_type=object_type,
                  object_id=None if object_id is None else str(object_id),
                  study_id=study_id, error=type(exc.orig or exc).__name__)


def render(request: Request, template: str, context: Mapping[str, Any] | None = None,
           *, status_code: int = 200) -> HTMLResponse:
    """Render a page with the signed-in user, CSRF token and navigation."""
    ctx = get_context(request)
    viewer = current_viewer(request)
    values: dict[str, Any] = {"viewer": viewer,
                              "csrf_token": viewer.csrf_token if viewer else ""}
    values.update(context or {})
    response = ctx.templates.TemplateResponse(request, template, values,
                                              status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    return response


__all__ = [
    "AdminDep",
    "CsrfAdminDep",
    "CsrfUserDep",
    "UserDep",
    "Forbidden",
    "FormRowId",
    "LoginRequired",
    "MAX_ROW_ID",
    "PassiveUserDep",
    "RowId",
    "Viewer",
    "WebContext",
    "audit",
    "audit_view",
    "client_address",
    "current_viewer",
    "get_context",
    "render",
    "same_origin",
    "require_admin",
    "require_admin_csrf",
    "require_csrf",
    "require_person",
    "require_person_csrf",
    "require_user",
    "require_user_passively",
]
