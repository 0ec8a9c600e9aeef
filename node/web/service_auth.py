"""Service accounts: drafting workers on other hosts that read instances with a bearer token.

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
from sqlalchemy.orm import Session

from node.db.models import AuditEvent, ServiceToken, User
from node.db.types import utcnow
from node.logs import log_event
from node.states import Role
from node.users import UserError
from node.web.deps import Forbidden, Viewer, client_address, get_context, require_user

logger = logging.getLogger(__name__)

#: Prefix of every service token (tells it apart from other secrets in a config file).
TOKEN_PREFIX = "rnw_"
#: The routes a service account may call: WADO-RS retrieve of stored instances.
SERVICE_ROUTES = frozenset({
    "dicomweb_retrieve_study", "dicomweb_retrieve_series", "dicomweb_retrieve_instance",
})
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
    """A signed-in user, or a worker's bearer token on a WADO-RS retrieve route.

    A request with an ``Authorization`` header is judged by the token alone: an unknown
    or revoked token answers 401, and a valid one on any route but a retrieve answers
    403. Each retrieve by a service account is audited with the study and client.
    """
    token = _bearer_token(request)
    if token is None:
        return require_user(request)
    ctx = get_context(request)
    route = request.scope.get("route")
    route_name = getattr(route, "name", None)
    now = utcnow()
    address = client_address(request)
    with ctx.database.sessions.begin() as session:
        account = authenticate_service(session, token, now)
        if account is None:
            session.add(AuditEvent(at=now, actor="-", action="service_token_refused",
                                   object_type="service_token",
                                   details={"client": address}))
        elif route_name in SERVICE_ROUTES:
            session.add(AuditEvent(
                at=now, actor=account.username, user_id=account.user_id,
                action="instances_fetched", object_type="study",
                object_id=str(request.path_params.get("study", ""))[:128],
                details={"client": address, "route": route_name},
            ))
    if account is None:
        log_event(logger, logging.WARNING, "service_token_refused")
        raise ServiceTokenRefused()
    if route_name not in SERVICE_ROUTES:
        raise Forbidden("A worker's token may only retrieve instances (WADO-RS).")
    return account


class ServiceTokenRefused(Exception):
    """The bearer token is unknown, revoked, or its account is inactive (401)."""


__all__ = [
    "SERVICE_ROUTES",
    "TOKEN_PREFIX",
    "ServiceAccount",
    "ServiceTokenRefused",
    "authenticate_service",
    "hash_service_token",
    "issue_service_token",
    "require_instance_reader",
    "revoke_service_tokens",
]
