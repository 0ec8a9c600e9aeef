"""Who may call DICOMweb: login cookies, personal bearer tokens and worker tokens.

:func:`require_instance_reader` guards the read routes (QIDO-RS, WADO-RS, WADO-URI) and
:func:`require_instance_writer` STOW-RS; personal tokens are kept by
:mod:`node.web.access_tokens`, refused tokens are throttled per client address by
:class:`~node.web.throttle.LoginThrottle`.

Service accounts: drafting workers on other hosts that read instances with a bearer token.

A worker without the node's storage folder fetches a study's instances over WADO-RS
(``GET /dicomweb/studies/{study}/series/{series}/instances/{instance}``). It presents
``Authorization: Bearer <token>``; the token belongs to a user of role
:attr:`~node.states.Role.WORKER`, which may call the three WADO-RS retrieve routes and
nothing else: no search, no metadata, no web page (those ask for a login cookie, which a
service account cannot get). Every authenticated retrieve is written to the audit trail.

Tokens are issued by ``radnode user token NAME``: 256 random bits, shown once; the
database keeps only their SHA-256 hash (:class:`~node.db.models.ServiceToken`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import secrets
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from node.db.models import AccessToken, AuditEvent, ServiceToken, User
from node.db.types import utcnow
from node.logs import log_event
from node.states import ROLE_SCOPES, Role, TokenScope
from node.users import UserError
from node.web.access_tokens import TokenRefusal, authenticate_access_token
from node.web.deps import (
    Forbidden,
    Viewer,
    client_address,
    get_context,
    require_person,
    require_user,
    same_origin,
)

logger = logging.getLogger(__name__)

#: Prefix of every service token (tells it apart from other secrets in a config file).
TOKEN_PREFIX = "rnw_"
#: The routes a service account may call: WADO-RS retrieve of stored instances.
SERVICE_ROUTES = frozenset({
    "dicomweb_retrieve_study", "dicomweb_retrieve_series", "dicomweb_retrieve_instance",
})
#: Names of the QIDO-RS routes (their reads are audited by the authentication).
SEARCH_ROUTE_PREFIX = "dicomweb_search"
#: ``last_used_at`` is written at most this often per token.
_TOUCH_INTERVAL = dt.timedelta(seconds=60)
_UNUSABLE_PASSWORD = "!service-account"


@dataclass(frozen=True)
class ServiceAccount:
    """The service account behind a valid bearer token."""

    user_id: int
    username: str
    token_id: int


def hash_service_token(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_service_token(session: Session, username: str, *, actor: str = "cli") -> str:
    """Create a token for the worker account ``username`` (created if missing).

    Parameters
    ----------
    session
        The caller's transaction (flushed, not committed).
    username
        The service account; an existing account must have the worker role.
    actor
        Who issues the token, for the audit trail.

    Returns
    -------
    str
        The token, to be given to the worker once; only its hash is stored.

    Raises
    ------
    UserError
        When ``username`` belongs to a person (radiologist or admin) or is inactive.
    """
    now = utcnow()
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        user = User(username=username, display_name="Drafting^Worker",
                    password_hash=_UNUSABLE_PASSWORD, role=Role.WORKER, active=True,
                    created_at=now)
        session.add(user)
        session.flush()
        session.add(AuditEvent(at=now, actor=actor, action="user_created", object_type="user",
                               object_id=str(user.id),
                               details={"username": username, "role": Role.WORKER.name}))
    elif user.role is not Role.WORKER:
        raise UserError(f"{username!r} is a {user.role.name.lower()} account, not a worker")
    elif not user.active:
        raise UserError(f"the worker account {username!r} is deactivated")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ServiceToken(token_hash=hash_service_token(token), user_id=user.id, created_at=now)
    session.add(row)
    session.flush()
    session.add(AuditEvent(at=now, actor=actor, action="service_token_issued",
                           object_type="service_token", object_id=str(row.id),
                           user_id=user.id, details={"username": username}))
    return token


def revoke_service_tokens(session: Session, username: str, *, actor: str = "cli") -> int:
    """Revoke every live token of ``username``; return how many were revoked."""
    now = utcnow()
    user_id = session.scalar(select(User.id).where(User.username == username))
    if user_id is None:
        return 0
    result = session.execute(
        update(ServiceToken)
        .where(ServiceToken.user_id == user_id, ServiceToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    count = int(result.rowcount or 0)  # type: ignore[attr-defined]
    session.add(AuditEvent(at=now, actor=actor, action="service_tokens_revoked",
                           object_type="user", object_id=str(user_id), user_id=user_id,
                           details={"tokens": count}))
    return count


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Forbidden("Authorization must be a bearer token.")
    return value.strip()


def authenticate_service(session: Session, token: str, now: dt.datetime) -> ServiceAccount | None:
    """The active worker account holding the unrevoked ``token``, else ``None``."""
    row = session.execute(
        select(ServiceToken, User)
        .join(User, User.id == ServiceToken.user_id)
        .where(ServiceToken.token_hash == hash_service_token(token),
               ServiceToken.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    service_token, user = row
    if not user.active or user.role is not Role.WORKER:
        return None
    if service_token.last_used_at is None or now - service_token.last_used_at >= _TOUCH_INTERVAL:
        service_token.last_used_at = now
    return ServiceAccount(user.id, user.username, service_token.id)


def require_instance_reader(request: Request) -> Viewer | ServiceAccount:
    """The caller of a DICOMweb read route (QIDO-RS, WADO-RS, WADO-URI), audited.

    * No ``Authorization`` header: the login cookie of a radiologist or admin.
    * ``Bearer rnp_…``: a person's token with the ``dicomweb-read`` scope, still
      allowed by the holder's current role (:mod:`node.web.access_tokens`).
    * ``Bearer rnw_…``: a worker's token, on the three WADO-RS retrieve routes only.

    A request with an ``Authorization`` header is judged by the token alone: unknown,
    revoked, expired or of an inactive user answers 401; a valid token outside its
    scope or routes 403; an address with too many refused tokens in the window 429
    before its token is looked up. Every read is audited with its user
    (``dicomweb_read``; ``instances_fetched`` for a worker), as is every refused token.
    """
    token = _bearer_token(request)
    if token is None:
        viewer = require_user(request)
        _audit_read(request, viewer)
        return viewer
    _check_bearer_throttle(request)
    if token.startswith(TOKEN_PREFIX):
        return _service_account(request, token)
    viewer = _token_viewer(request, token, TokenScope.DICOMWEB_READ)
    _audit_read(request, viewer)
    return viewer


def require_instance_writer(request: Request) -> Viewer:
    """The caller of STOW-RS: an uploader's login cookie (from this origin) or a personal
    token with the ``dicomweb-store`` scope. Worker tokens and readers answer 403."""
    token = _bearer_token(request)
    if token is None:
        viewer = require_person(request)
        if TokenScope.DICOMWEB_STORE not in ROLE_SCOPES[viewer.role]:
            raise Forbidden(f"A {viewer.role.value} account may not store instances.")
        if not same_origin(request):
            raise Forbidden("The request did not come from this site.")
        return viewer
    _check_bearer_throttle(request)
    if token.startswith(TOKEN_PREFIX):
        _service_account(request, token, audit_fetch=False)
        raise Forbidden("A worker's token may only retrieve instances (WADO-RS).")
    return _token_viewer(request, token, TokenScope.DICOMWEB_STORE)


def _route_name(request: Request) -> str | None:
    return getattr(request.scope.get("route"), "name", None)


def _write_audit(request: Request, events: list[AuditEvent],
                 touch_token: int | None = None) -> None:
    """Write audit events (and a token's last use) in a short transaction of their own.

    As for page views (:func:`node.web.deps.audit_view`), a read is served even when
    its event cannot be written (a full volume); the event then goes to the log.
    """
    ctx = get_context(request)
    try:
        with ctx.database.sessions.begin() as session:
            session.add_all(events)
            if touch_token is not None:
                session.execute(update(AccessToken).where(AccessToken.id == touch_token)
                                .values(last_used_at=events[0].at if events else utcnow()))
    except DBAPIError as exc:
        for event in events:
            log_event(logger, logging.ERROR, "audit_unrecorded", action=event.action,
                      user_id=event.user_id, object_type=event.object_type,
                      error=type(exc.orig or exc).__name__)


def _audit_read(request: Request, viewer: Viewer) -> None:
    """Audit a search (QIDO-RS) here; the resources that read stored instances audit
    each study they read themselves (:meth:`node.web.wado_source.InstanceSource.
    audit_read`). A token's last use is written either way (at most once a minute)."""
    touch = getattr(request.state, "touch_token", None)
    route = _route_name(request) or ""
    if not route.startswith(SEARCH_ROUTE_PREFIX):
        if touch is not None:
            _write_audit(request, [], touch)
        return
    study = request.path_params.get("study")
    details: dict[str, object] = {"client": client_address(request),
                                  "route": _route_name(request),
                                  "via": "session" if viewer.token_id is None else "token"}
    if viewer.token_id is not None:
        details["token_id"] = viewer.token_id
    _write_audit(request, [AuditEvent(
        at=utcnow(), actor=viewer.username, user_id=viewer.id, action="dicomweb_read",
        object_type="study" if study else "dicomweb",
        object_id=str(study)[:128] if study else None, details=details)], touch)


def _check_bearer_throttle(request: Request) -> None:
    ctx = get_context(request)
    address = client_address(request)
    check = ctx.throttle.bearer_check(address)
    if check.allowed:
        return
    if check.first_refusal:
        _write_audit(request, [AuditEvent(at=utcnow(), actor="-", action="bearer_throttled",
                                          object_type="access_token",
                                          details={"client": address})])
    log_event(logger, logging.WARNING, "bearer_throttled")
    raise BearerThrottled(check.retry_after)


def _token_viewer(request: Request, token: str, scope: TokenScope) -> Viewer:
    """The person behind a personal token, allowed ``scope``; 401 or 403 otherwise."""
    ctx = get_context(request)
    now = utcnow()
    address = client_address(request)
    with ctx.database.sessions() as session:
        outcome = authenticate_access_token(session, token, now)
    if isinstance(outcome, TokenRefusal):
        ctx.throttle.bearer_failed(address, now)
        _write_audit(request, [AuditEvent(
            at=now, actor="-", user_id=outcome.user_id, action="access_token_refused",
            object_type="access_token",
            object_id=None if outcome.token_id is None else str(outcome.token_id),
            details={"client": address, "reason": outcome.reason,
                     "route": _route_name(request)})])
        log_event(logger, logging.WARNING, "access_token_refused", reason=outcome.reason)
        raise ServiceTokenRefused()
    if scope not in outcome.scopes:
        _write_audit(request, [AuditEvent(
            at=now, actor=outcome.username, user_id=outcome.user_id,
            action="access_token_out_of_scope", object_type="access_token",
            object_id=str(outcome.token_id),
            details={"client": address, "scope": scope.value,
                     "route": _route_name(request)})])
        raise Forbidden(f"This token does not allow {scope.value} (for a "
                        f"{outcome.role.value}, or as issued).")
    viewer = Viewer(outcome.user_id, outcome.username, outcome.display_name, outcome.role,
                    web_session_id=0, csrf_token=secrets.token_hex(32),
                    token_id=outcome.token_id)
    request.state.viewer = viewer
    request.state.touch_token = outcome.token_id if outcome.touch else None
    return viewer


def _service_account(request: Request, token: str, *,
                     audit_fetch: bool = True) -> ServiceAccount:
    """The worker behind a worker token, on a retrieve route; 401 or 403 otherwise."""
    ctx = get_context(request)
    route_name = _route_name(request)
    now = utcnow()
    address = client_address(request)
    with ctx.database.sessions.begin() as session:
        account = authenticate_service(session, token, now)
        if account is None:
            session.add(AuditEvent(at=now, actor="-", action="service_token_refused",
                                   object_type="service_token",
                                   details={"client": address}))
        elif audit_fetch and route_name in SERVICE_ROUTES:
            session.add(AuditEvent(
                at=now, actor=account.username, user_id=account.user_id,
                action="instances_fetched", object_type="study",
                object_id=str(request.path_params.get("study", ""))[:128],
                details={"client": address, "route": route_name},
            ))
    if account is None:
        ctx.throttle.bearer_failed(address, now)
        log_event(logger, logging.WARNING, "service_token_refused")
        raise ServiceTokenRefused()
    if route_name not in SERVICE_ROUTES:
        raise Forbidden("A worker's token may only retrieve instances (WADO-RS).")
    return account


class BearerThrottled(Exception):
    """Too many refused bearer tokens from this client address in the window (429)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many refused tokens")
        self.retry_after = retry_after


class ServiceTokenRefused(Exception):
    """The bearer token is unknown, revoked, or its account is inactive (401)."""


__all__ = [
    "BearerThrottled",
    "SERVICE_ROUTES",
    "TOKEN_PREFIX",
    "ServiceAccount",
    "ServiceTokenRefused",
    "authenticate_service",
    "hash_service_token",
    "issue_service_token",
    "require_instance_reader",
    "require_instance_writer",
    "revoke_service_tokens",
]
