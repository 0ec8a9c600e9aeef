"""People who sign in to the web app: creation, password hashing (Argon2id), verification.

Passwords are stored only as Argon2id hashes (argon2-cffi's current parameters; a hash
made with older parameters is replaced on the next successful login). A login attempt for
an unknown or inactive user costs as much time as one for a real user, so response times
do not tell which usernames exist.
"""

from __future__ import annotations

import contextlib
import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node.db.models import AuditEvent, User
from node.db.types import utcnow
from node.reports.sr_content import check_long_string, check_person_name
from node.states import Role

MIN_PASSWORD_LENGTH = 10
"""Shortest password accepted for a new user."""

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HASHER = PasswordHasher()
_dummy_hashes: dict[int, str] = {}


def use_password_hasher(hasher: PasswordHasher) -> PasswordHasher:
    """Hash new passwords with ``hasher`` from now on; return the previous one.

    Existing hashes keep verifying (their parameters are in the hash) and are rehashed
    with the new parameters at the next successful login. Tests use cheap parameters.
    """
    global _HASHER
    previous, _HASHER = _HASHER, hasher
    return previous


def _dummy_hash() -> str:
    """A hash made with the current parameters, to verify unknown users against."""
    key = id(_HASHER)
    if key not in _dummy_hashes:
        _dummy_hashes[key] = _HASHER.hash("radnode-timing-equaliser")
    return _dummy_hashes[key]


class UserError(ValueError):
    """A user cannot be created as asked (bad value, or the username is taken)."""


def hash_password(password: str) -> str:
    """Return the Argon2id hash of ``password``."""
    return _HASHER.hash(password)


def check_password_policy(password: str) -> None:
    """Refuse passwords that are too short or only blanks.

    Raises
    ------
    UserError
        When the password does not meet the policy.
    """
    if len(password) < MIN_PASSWORD_LENGTH or not password.strip():
        raise UserError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")


def create_user(
    session: Session,
    username: str,
    password: str,
    *,
    role: Role,
    display_name: str,
    organization: str | None = None,
    person_identifier: str | None = None,
    actor: str = "cli",
) -> User:
    """Add a user (in the caller's transaction) and audit it.

    Parameters
    ----------
    session
        Where to add the user; flushed, not committed.
    username
        Login name: letters, digits and ``._@-``, at most 64 characters.
    password
        Plain password, hashed here (see :func:`check_password_policy`).
    role
        What the user may do.
    display_name
        DICOM person name ``Family^Given`` (written as the verifying observer of signed
        reports).
    organization
        Verifying organization for the user's signed reports.
    person_identifier
        The person's identifier at the hospital (written as the verifying observer's
        identification code); the username when omitted.
    actor
        Who creates the user, for the audit trail.

    Returns
    -------
    User
        The new row, with its id.

    Raises
    ------
    UserError
        On an invalid value or a username already taken.
    """
    if not _USERNAME.match(username):
        raise UserError("usernames are 1-64 letters, digits or ._@- and start with a "
                        "letter or digit")
    check_password_policy(password)
    try:
        check_person_name(display_name, "name")
        if organization is not None:
            check_long_string(organization, "organization")
        if person_identifier is not None:
            check_long_string(person_identifier, "person identifier")
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    taken = session.scalar(
        select(func.count(User.id)).where(func.lower(User.username) == username.lower())
    )
    if taken:
        raise UserError(f"the username {username!r} is taken")
    user = User(
        username=username, display_name=display_name, password_hash=hash_password(password),
        role=role, organization=organization, person_identifier=person_identifier,
        active=True, created_at=utcnow(),
    )
    session.add(user)
    session.flush()
    session.add(AuditEvent(
        at=utcnow(), actor=actor, action="user_created", object_type="user",
        object_id=str(user.id), details={"username": username, "role": role.name},
    ))
    return user


def verify_password(user: User, password: str) -> bool:
    """Check ``password`` against the user's hash; rehash in place when parameters changed.

    Returns
    -------
    bool
        Whether the password matches. The caller commits a rehash.
    """
    try:
        _HASHER.verify(user.password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    if _HASHER.check_needs_rehash(user.password_hash):
        user.password_hash = _HASHER.hash(password)
    return True


def authenticate(session: Session, username: str, password: str) -> User | None:
    """Return the active user with this username and password, else ``None``.

    Unknown and inactive users are checked against a dummy hash, so that they take as
    long as a wrong password.
    """
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.active:
        with contextlib.suppress(VerificationError):
            _HASHER.verify(_dummy_hash(), password)
        return None
    return user if verify_password(user, password) else None


__all__ = [
    "MIN_PASSWORD_LENGTH",
    "UserError",
    "authenticate",
    "check_password_policy",
    "create_user",
    "hash_password",
    "use_password_hasher",
    "verify_password",
]
