"""Login and logout.

``GET /login`` sets a signed pre-login cookie and renders a form whose CSRF token is bound
to it; ``POST /login`` checks that token, the throttle (too many failures for the username
and client address: 429), then the password. A successful login creates a
:class:`~node.db.models.WebSession` row and sets the login cookie (HttpOnly,
SameSite=Strict, Secure when configured). ``POST /logout`` ends the row.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import update

from node.db.models import AuditEvent, WebSession
from node.db.types import utcnow
from node.logs import log_event
from node.users import authenticate
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
    key = f"{username.lower()}|{address}"
    wait = ctx.throttle.retry_after(key)
    if wait > 0:
        response = _login_page(
            request, username=username, next_path=next_path, status_code=429,
            error=f"Too many failed logins. Try again in {math.ceil(wait / 60)} minute(s).")
        response.headers["Retry-After"] = str(math.ceil(wait))
        return response
    now = utcnow()
    with ctx.database.sessions.begin() as session:
        user = authenticate(session, username, password) if username and password else None
        if user is None:
            session.add(AuditEvent(at=now, actor=username or "-", action="login_failed",
                                   object_type="user", details={"client": address}))
        else:
            idle, lifetime = session_lifetimes(ctx.settings)
            token = ctx.signer.new_token()
            web_session = WebSession(token_hash=token_hash(token), user_id=user.id,
                                     created_at=now, last_seen_at=now,
                                     expires_at=now + lifetime, client_address=address)
            session.add(web_session)
            session.add(AuditEvent(at=now, actor=user.username, user_id=user.id,
                                   action="login", object_type="user",
                                   object_id=str(user.id), details={"client": address}))
            user_id = user.id
    if user is None:
        ctx.throttle.failed(key)
        log_event(logger, logging.WARNING, "login_failed")
        return _login_page(request, error="Unknown username or wrong password.",
                           username=username, next_path=next_path, status_code=401)
    ctx.throttle.succeeded(key)
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
