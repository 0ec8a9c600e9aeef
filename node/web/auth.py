"""Login and logout.

``GET /login`` sets a signed pre-login cookie and renders a form whose CSRF token is bound
to it; ``POST /login`` checks that token, reserves an attempt with the throttle (too many
failures for the username and client address, or for the address: 429, see
:mod:`node.web.throttle`), then checks the password with no database transaction open.
A successful login creates a
:class:`~node.db.models.WebSession` row and sets the login cookie (HttpOnly,
SameSite=Strict, Secure when configured). ``POST /logout`` ends the row.
"""

from __future__ import annotations

import logging
import math
import re
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from node.db.models import AuditEvent, User, WebSession
from node.db.types import utcnow
from node.logs import log_event
from node.states import Role
from node.users import check_password, find_login_candidate
from node.web.deps import (
    CsrfUserDep,
    audit,
    client_address,
    current_viewer,
    get_context,
    render,
    session_lifetimes,
)
from node.web.security import LOGIN_COOKIE, LOGIN_COOKIE_MAX_AGE, SESSION_COOKIE, token_hash

if TYPE_CHECKING:
    from node.db.engine import Database

logger = logging.getLogger(__name__)
router = APIRouter()


_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9/_.~%?&=+-]*")


def safe_next(target: str | None) -> str:
    """A local path to go to after login (never another site: no ``//``, no scheme,
    no backslash, no blanks or control characters that browsers would drop)."""
    if not target or not _LOCAL_PATH.fullmatch(target):
        return "/"
    return target


def _login_page(request: Request, *, error: str | None = None, username: str = "",
                next_path: str = "/", status_code: int = 200) -> Response:
    ctx = get_context(request)
    nonce, cookie = ctx.signer.new_login_nonce()
    response = render(request, "login.html", {
        "login_csrf": ctx.signer.csrf_token("login", nonce), "error": error,
        "username": username, "next_path": next_path,
    }, status_code=status_code)
    response.set_cookie(LOGIN_COOKIE, cookie, max_age=LOGIN_COOKIE_MAX_AGE, httponly=True,
                        samesite="strict", secure=ctx.settings.web.secure_cookies,
                        path="/login")
    return response


def _record_failure(database: Database, username: str, address: str, action: str) -> None:
    """Audit a failed or throttled login in a short transaction of its own.

    Only attempts the throttle let through are audited one by one (at most its limits per
    window), plus the first refusal of each key per window; so a flood cannot grow the
    audit trail without bound. A failed write (full disk) is logged, not raised: the
    attempt is refused either way.
    """
    try:
        with database.sessions.begin() as session:
            session.add(AuditEvent(at=utcnow(), actor=username or "-", action=action,
                                   object_type="user", details={"client": address}))
    except (DBAPIError, OSError) as exc:
        log_event(logger, logging.ERROR, "audit_unrecorded", action=action,
                  error=type(exc).__name__)


@router.get("/login")
def login_form(request: Request,
               next_path: Annotated[str, Query(alias="next")] = "/") -> Response:
    """The login page (a signed-in user goes straight on)."""
    if current_viewer(request) is not None:
        return RedirectResponse(safe_next(next_path), status_code=303)
    return _login_page(request, next_path=safe_next(next_path))


@router.post("/login")
def login(
    request: Request,
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next_path: Annotated[str, Form(alias="next")] = "/",
) -> Response:
    """Check the credentials; set the login cookie on success."""
    ctx = get_context(request)
    next_path = safe_next(next_path)
    username = username.strip()[:64]
    nonce = ctx.signer.read_login_nonce(request.cookies.get(LOGIN_COOKIE))
    if not ctx.signer.check_csrf("login", nonce, csrf_token):
        return _login_page(request, error="The login form expired. Please try again.",
                           username=username, next_path=next_path, status_code=403)
    address = client_address(request)
    reservation = ctx.throttle.reserve(username, address)
    if not reservation.allowed:
        if reservation.first_refusal:
            _record_failure(ctx.database, username, address, "login_throttled")
        response = _login_page(
            request, username=username, next_path=next_path, status_code=429,
            error="Too many failed logins. Try again in "
                  f"{math.ceil(reservation.retry_after / 60)} minute(s).")
        response.headers["Retry-After"] = str(math.ceil(reservation.retry_after))
        return response
    # No transaction is open while the password is hashed (see node.users).
    candidate = find_login_candidate(ctx.database.sessions, username) if password else None
    checked = check_password(candidate, password)
    if candidate is None or not checked.ok:
        _record_failure(ctx.database, username, address, "login_failed")
        log_event(logger, logging.WARNING, "login_failed")
        return _login_page(request, error="Unknown username or wrong password.",
                           username=username, next_path=next_path, status_code=401)
    ctx.throttle.succeeded(reservation)
    now = utcnow()
    idle, lifetime = session_lifetimes(ctx.settings)
    token = ctx.signer.new_token()
    with ctx.database.sessions.begin() as session:
        if checked.new_hash is not None:
            session.execute(update(User).where(User.id == candidate.id,
                                               User.password_hash == candidate.password_hash)
                            .values(password_hash=checked.new_hash))
        session.add(WebSession(token_hash=token_hash(token), user_id=candidate.id,
                               created_at=now, last_seen_at=now,
                               expires_at=now + lifetime, client_address=address))
        session.add(AuditEvent(at=now, actor=candidate.username, user_id=candidate.id,
                               action="login", object_type="user",
                               object_id=str(candidate.id), details={"client": address}))
        if next_path == "/" and session.scalar(
                select(User.role).where(User.id == candidate.id)) is Role.UPLOADER:
            next_path = "/account"  # an uploader's only page
    user_id = candidate.id
    log_event(logger, logging.INFO, "login", user_id=user_id)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(SESSION_COOKIE, ctx.signer.sign_session(token),
                        max_age=int(lifetime.total_seconds()), httponly=True,
                        samesite="strict", secure=ctx.settings.web.secure_cookies, path="/")
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, viewer: CsrfUserDep) -> Response:
    """End the login and go back to the login page."""
    ctx = get_context(request)
    now = utcnow()
    with ctx.database.sessions.begin() as session:
        session.execute(update(WebSession).where(WebSession.id == viewer.web_session_id)
                        .values(ended_at=now))
        audit(session, viewer, "logout", "user", viewer.id, now=now)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=ctx.settings.web.secure_cookies)
    return response
