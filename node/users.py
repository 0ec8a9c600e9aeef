"""People who sign in to the web app: creation, password hashing (Argon2id), verification.

Passwords are stored only as Argon2id hashes (argon2-cffi's current parameters; a hash
made with older parameters is replaced on the next successful login). A new password must
pass :func:`check_password_policy` (length, and a strength estimate by zxcvbn that refuses
common passwords, sequences and passwords made of the username or display name).

A login is checked in three steps so that hashing never holds a database transaction
open: :func:`find_login_candidate` reads the user row (and closes its transaction),
:func:`check_password` verifies the hash with no transaction open, and the caller records
the outcome in a short transaction. An unknown, inactive or service (worker) account is
verified against a dummy hash, so it takes the same hash work as a real user and response
times tell nothing about which usernames exist or what they are. Verification runs on
:data:`VERIFY_SLOTS` threads at the lowest CPU priority, so a flood of logins cannot take
the cores from the DICOM receiver.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from zxcvbn import zxcvbn

from node.db.models import AuditEvent, User
from node.db.types import utcnow
from node.reports.sr_content import check_long_string, check_person_name
from node.reports.sr_language import language_code
from node.states import Role

MIN_PASSWORD_LENGTH = 10
"""Shortest password accepted for a new user."""
MIN_PASSWORD_SCORE = 3
"""Lowest zxcvbn score (0-4) accepted: 3 means about 10^8 guesses or more."""
VERIFY_SLOTS = max(1, (os.cpu_count() or 2) // 2)
"""Password verifications run at once per process (half the cores, at least one)."""
VERIFY_NICENESS = 19
"""CPU niceness of the verifying threads: the lowest priority, below image reception."""


def _lower_priority() -> None:
    """Run this thread (and the hashing threads it starts) at the lowest CPU priority."""
    with contextlib.suppress(AttributeError, OSError):  # per-thread niceness: Linux
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), VERIFY_NICENESS)


_verifier = ThreadPoolExecutor(max_workers=VERIFY_SLOTS, thread_name_prefix="verify",
                               initializer=_lower_priority)

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


def check_password_policy(password: str, related: Sequence[str] = ()) -> None:
    """Refuse passwords that are short, common, guessable or made of the user's names.

    Parameters
    ----------
    password
        The proposed password.
    related
        Words of the user (username, display name parts, organization) that the password
        must not be built from.

    Raises
    ------
    UserError
        When the password does not meet the policy; the message says why.
    """
    if len(password) < MIN_PASSWORD_LENGTH or not password.strip():
        raise UserError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    words = [w for value in related for w in re.split(r"[\^\s._@-]+", value.lower()) if w]
    words += [value.lower() for value in related if value]
    estimate = zxcvbn(password[:128], user_inputs=words)
    if int(estimate["score"]) < MIN_PASSWORD_SCORE:
        hint = str(estimate.get("feedback", {}).get("warning") or "").rstrip(".")
        reason = f" ({hint})" if hint else ""
        raise UserError("the password is too easy to guess" + reason + "; use a longer "
                        "passphrase of unrelated words")


def create_user(
    session: Session,
    username: str,
    password: str,
    *,
    role: Role,
    display_name: str,
    organization: str | None = None,
    person_identifier: str | None = None,
    language: str | None = None,
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
    language
        RFC 5646 tag of the reports the user signs (one of
        :data:`~node.reports.sr_language.LANGUAGES`); the site's ``[reports] language``
        when omitted.
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
    check_password_policy(password, [username, display_name, organization or ""])
    try:
        check_person_name(display_name, "name")
        if organization is not None:
            check_long_string(organization, "organization")
        if person_identifier is not None:
            check_long_string(person_identifier, "person identifier")
        if language is not None:
            language = user_language(language)
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
        language=language, active=True, created_at=utcnow(),
    )
    session.add(user)
    session.flush()
    session.add(AuditEvent(
        at=utcnow(), actor=actor, action="user_created", object_type="user",
        object_id=str(user.id), details={"username": username, "role": role.name},
    ))
    return user


def user_language(tag: str) -> str:
    """The canonical form of a user's report language tag.

    Raises
    ------
    ValueError
        If the node does not write SRs in that language.
    """
    return language_code(tag).value


def set_user_language(session: Session, user: User, language: str | None, *,
                      actor: str = "cli") -> None:
    """Set (or, with ``None``, clear) the language of the reports ``user`` signs; audited.

    Raises
    ------
    UserError
        If the node does not write SRs in that language.
    """
    try:
        tag = user_language(language) if language is not None else None
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    previous, user.language = user.language, tag
    session.add(AuditEvent(at=utcnow(), actor=actor, action="user_language_set",
                           object_type="user", object_id=str(user.id),
                           details={"language": tag, "previous": previous}))


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


@dataclass(frozen=True)
class LoginCandidate:
    """The user a login names, read before the password is checked."""

    id: int
    username: str
    password_hash: str


@dataclass(frozen=True)
class PasswordCheck:
    """The outcome of :func:`check_password`."""

    ok: bool
    new_hash: str | None = None
    """A hash with the current parameters, when the stored one should be replaced."""


def find_login_candidate(sessions: sessionmaker[Session], username: str) -> LoginCandidate | None:
    """The active person (radiologist or admin) with this username, read in a short
    transaction that is closed on return; ``None`` for anyone else, service accounts
    included."""
    if not username:
        return None
    with sessions() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None or not user.active or user.role is Role.WORKER:
            return None
        return LoginCandidate(user.id, user.username, user.password_hash)


def check_password(candidate: LoginCandidate | None, password: str) -> PasswordCheck:
    """Verify ``password`` (never call this inside a database transaction).

    Without a candidate the password is verified against a dummy hash, so the work and
    time are those of a real user with a wrong password. The work runs on at most
    :data:`VERIFY_SLOTS` threads at the lowest CPU priority (:data:`VERIFY_NICENESS`), so
    a flood of logins waits for the CPU rather than taking it from image reception.
    """
    return _verifier.submit(_check, _HASHER, candidate, password).result()


def _check(hasher: PasswordHasher, candidate: LoginCandidate | None,
           password: str) -> PasswordCheck:
    stored = candidate.password_hash if candidate is not None else _dummy_hash()
    try:
        hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return PasswordCheck(False)
    if candidate is None:
        return PasswordCheck(False)
    new_hash = hasher.hash(password) if hasher.check_needs_rehash(stored) else None
    return PasswordCheck(True, new_hash)


def authenticate(session: Session, username: str, password: str) -> User | None:
    """Return the active person with this username and password, else ``None``.

    Unknown, inactive and service accounts are checked against a dummy hash, so that they
    take as long as a wrong password. (The web login uses :func:`find_login_candidate`
    and :func:`check_password`, which hold no transaction while hashing.)
    """
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.active or user.role is Role.WORKER:
        with contextlib.suppress(VerificationError):
            _HASHER.verify(_dummy_hash(), password)
        return None
    return user if verify_password(user, password) else None


__all__ = [
    "MIN_PASSWORD_LENGTH",
    "MIN_PASSWORD_SCORE",
    "VERIFY_NICENESS",
    "VERIFY_SLOTS",
    "LoginCandidate",
    "PasswordCheck",
    "UserError",
    "authenticate",
    "check_password",
    "check_password_policy",
    "find_login_candidate",
    "create_user",
    "set_user_language",
    "user_language",
    "hash_password",
    "use_password_hasher",
    "verify_password",
]
