"""Personal bearer tokens: how a viewer on another origin, or a desktop client, reaches
DICOMweb as a person.

A token is 256 random bits with the prefix :data:`TOKEN_PREFIX`, shown once when issued
(``radnode token issue`` or the account page); the database keeps its SHA-256
(:class:`~node.db.models.AccessToken`). Every token expires (at most ``[web]
token_max_days`` after issue) and carries scopes (:class:`~node.states.TokenScope`) no
wider than its holder's role (:data:`~node.states.ROLE_SCOPES`). On each request it is
checked again against the holder as they are *now*: a deactivated or deleted user's
tokens stop at once, and a lowered role narrows them.

A token is found by the SHA-256 of what the client presents, with one indexed query:
the secret itself is never compared byte by byte, so the time of an answer tells
nothing about how much of a guess was right.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db.models import AccessToken, AuditEvent, User
from node.states import ROLE_SCOPES, Role, TokenScope
from node.users import UserError

#: Prefix of every personal token (tells it apart from worker tokens, ``rnw_``).
TOKEN_PREFIX = "rnp_"
#: ``last_used_at`` is written at most this often per token.
TOUCH_INTERVAL = dt.timedelta(seconds=60)
_LIFETIME = re.compile(r"^\s*(\d{1,5})\s*([dhw])\s*$")
_LABEL_LENGTH = 64


@dataclass(frozen=True)
class TokenHolder:
    """The person behind a valid token, and what the token may do now."""

    token_id: int
    user_id: int
    username: str
    display_name: str
    role: Role
    scopes: frozenset[TokenScope]
    """The token's scopes that the holder's current role still allows."""
    touch: bool
    """``last_used_at`` is older than :data:`TOUCH_INTERVAL` (write it)."""


@dataclass(frozen=True)
class TokenRefusal:
    """Why a presented token was refused (for the audit trail, never for the client)."""

    reason: str
    """``unknown``, ``revoked``, ``expired`` or ``inactive``."""
    user_id: int | None = None
    token_id: int | None = None


@dataclass(frozen=True)
class IssuedToken:
    """A new token: the secret (shown once) and its row's facts."""

    token: str
    token_id: int
    expires_at: dt.datetime
    scopes: frozenset[TokenScope]


def hash_access_token(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_lifetime(text: str) -> dt.timedelta:
    """A token lifetime written ``30d``, ``12h`` or ``2w``.

    Raises
    ------
    UserError
        When the text is not of that form or is zero.
    """
    match = _LIFETIME.match(text)
    if match is None or int(match.group(1)) == 0:
        raise UserError(f"invalid lifetime {text!r}: a whole number of hours, days or "
                        "weeks, e.g. 12h, 30d, 2w")
    number, unit = int(match.group(1)), match.group(2)
    return {"h": dt.timedelta(hours=number), "d": dt.timedelta(days=number),
            "w": dt.timedelta(weeks=number)}[unit]


def parse_scopes(values: Iterable[str]) -> frozenset[TokenScope]:
    """Scopes named by their values (``dicomweb-read``); :class:`UserError` if unknown."""
    scopes = set()
    for value in values:
        try:
            scopes.add(TokenScope(value.strip().lower()))
        except ValueError:
            known = ", ".join(s.value for s in TokenScope)
            raise UserError(f"unknown scope {value!r} (known: {known})") from None
    return frozenset(scopes)


def issue_access_token(
    session: Session,
    user: User,
    *,
    lifetime: dt.timedelta,
    max_days: int,
    scopes: frozenset[TokenScope] | None = None,
    label: str = "",
    actor: str,
    now: dt.datetime,
) -> IssuedToken:
    """Create a token for ``user`` (in the caller's transaction) and audit it.

    Parameters
    ----------
    session
        The caller's transaction (flushed, not committed).
    user
        The holder: an active radiologist, admin or uploader.
    lifetime
        How long the token lives; at most ``max_days``.
    max_days
        The site's longest token lifetime (``[web] token_max_days``).
    scopes
        What the token may do; every scope of the role when ``None``. Never more than
        the role allows.
    label
        The holder's name for the token (``OHIF on the reading laptop``).
    actor
        Who issues it, for the audit trail.
    now
        The time of issue.

    Returns
    -------
    IssuedToken
        The secret, to be shown once; only its hash is stored.

    Raises
    ------
    UserError
        For an inactive or service account, a lifetime out of range, or scopes the
        role does not have.
    """
    if not user.active:
        raise UserError(f"the account {user.username!r} is deactivated")
    allowed = ROLE_SCOPES[user.role]
    if not allowed:
        raise UserError(f"a {user.role.value} account has no personal tokens"
                        + (" (see `radnode user token`)" if user.role is Role.WORKER else ""))
    if lifetime <= dt.timedelta(0) or lifetime > dt.timedelta(days=max_days):
        raise UserError(f"a token lives at most {max_days} days ([web] token_max_days)")
    wanted = allowed if scopes is None or not scopes else scopes
    beyond = wanted - allowed
    if beyond:
        names = ", ".join(sorted(s.value for s in beyond))
        raise UserError(f"a {user.role.value} may not hold a token for {names}")
    label = " ".join(label.split())[:_LABEL_LENGTH]
    if "\x00" in label:
        raise UserError("the label holds a NUL character")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = AccessToken(token_hash=hash_access_token(token), user_id=user.id, label=label,
                      scopes=sorted(s.value for s in wanted), created_at=now,
                      expires_at=now + lifetime)
    session.add(row)
    session.flush()
    session.add(AuditEvent(at=now, actor=actor, action="access_token_issued",
                           object_type="access_token", object_id=str(row.id),
                           user_id=user.id,
                           details={"username": user.username, "scopes": row.scopes,
                                    "expires_at": row.expires_at.isoformat()}))
    return IssuedToken(token, row.id, row.expires_at, frozenset(wanted))


def list_access_tokens(session: Session, user_id: int | None = None) -> list[AccessToken]:
    """Tokens (of one user, or everyone's), newest first; detached-safe rows."""
    query = select(AccessToken).order_by(AccessToken.created_at.desc(), AccessToken.id.desc())
    if user_id is not None:
        query = query.where(AccessToken.user_id == user_id)
    return list(session.scalars(query))


def revoke_access_token(session: Session, token_id: int, *, actor: str, now: dt.datetime,
                        actor_id: int | None = None, holder_id: int | None = None) -> bool:
    """Revoke one token; ``holder_id`` limits it to that user's tokens.

    Returns
    -------
    bool
        Whether a live token was revoked (``False``: no such token, another user's, or
        already revoked).
    """
    row = session.get(AccessToken, token_id, with_for_update=True)
    if row is None or (holder_id is not None and row.user_id != holder_id) \
            or row.revoked_at is not None:
        return False
    row.revoked_at = now
    session.add(AuditEvent(at=now, actor=actor, user_id=actor_id,
                           action="access_token_revoked", object_type="access_token",
                           object_id=str(row.id), details={"holder_id": row.user_id}))
    return True


def authenticate_access_token(session: Session, token: str,
                              now: dt.datetime) -> TokenHolder | TokenRefusal:
    """The holder of ``token`` and what it may do now, or why it is refused (reads only)."""
    row = session.execute(
        select(AccessToken, User).join(User, User.id == AccessToken.user_id)
        .where(AccessToken.token_hash == hash_access_token(token))
    ).first()
    if row is None:
        return TokenRefusal("unknown")
    access_token, user = row
    refusal = ("revoked" if access_token.revoked_at is not None
               else "expired" if access_token.expires_at <= now
               else "inactive" if not user.active else None)
    if refusal is not None:
        return TokenRefusal(refusal, user.id, access_token.id)
    granted = {TokenScope(value) for value in access_token.scopes
               if value in {s.value for s in TokenScope}}
    touch = (access_token.last_used_at is None
             or now - access_token.last_used_at >= TOUCH_INTERVAL)
    return TokenHolder(access_token.id, user.id, user.username, user.display_name, user.role,
                       frozenset(granted) & ROLE_SCOPES[user.role], touch)


__all__ = [
    "TOKEN_PREFIX",
    "IssuedToken",
    "TokenHolder",
    "TokenRefusal",
    "authenticate_access_token",
    "hash_access_token",
    "issue_access_token",
    "list_access_tokens",
    "parse_lifetime",
    "parse_scopes",
    "revoke_access_token",
]
