"""Login cookies, CSRF tokens, login throttling and the signing key.

* The browser holds a random login token signed with the node's secret key (itsdangerous);
  the database holds only its SHA-256 (:class:`~node.db.models.WebSession`), so a login can
  be ended server-side and a stolen database yields no usable cookie.
* CSRF tokens are HMACs of the login token (or, before login, of a signed random nonce held
  in a separate cookie): a POST must carry the token that only pages of this origin see.
* :class:`LoginThrottle` refuses a username and client address after too many failures in
  a sliding window, counted in the database so that every web process sees them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from node.config import WebSettings
from node.db.models import LoginFailure
from node.db.types import utcnow

SESSION_COOKIE = "radnode_session"
LOGIN_COOKIE = "radnode_login"
LOGIN_COOKIE_MAX_AGE = 3600


def resolve_secret_key(settings: WebSettings) -> str:
    """Return the configured secret key, or the one in ``secret_key_file`` (made if missing).

    The generated file holds 64 random bytes (hex) and is created with mode 0600, atomically,
    so two processes starting together agree on one key.
    """
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return settings.secret_key.get_secret_value()
    path = Path(settings.secret_key_file)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(64) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # fails if another process made it first
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    key = path.read_text(encoding="ascii").strip()
    if len(key) < 32:
        raise ValueError(f"the web secret key in {path} is too short")
    return key


def token_hash(token: str) -> str:
    """SHA-256 (hex) of a login token, as stored in the database."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class CookieSigner:
    """Sign and check the login and pre-login cookies and derive CSRF tokens.

    Parameters
    ----------
    secret_key
        The node's web secret.
    """

    def __init__(self, secret_key: str) -> None:
        self._secret = secret_key.encode("utf-8")
        self._session = URLSafeTimedSerializer(secret_key, salt="radnode-session")
        self._login = URLSafeTimedSerializer(secret_key, salt="radnode-login")

    @staticmethod
    def new_token() -> str:
        """A fresh random login token (never stored in clear)."""
        return secrets.token_urlsafe(32)

    def sign_session(self, token: str) -> str:
        """Cookie value for a login token."""
        return self._session.dumps(token)

    def read_session(self, cookie: str | None, max_age: float) -> str | None:
        """The login token of a cookie value, or ``None`` if unsigned, altered or too old."""
        if not cookie:
            return None
        try:
            value = self._session.loads(cookie, max_age=int(max_age))
        except BadSignature:
            return None
        return value if isinstance(value, str) else None

    def new_login_nonce(self) -> tuple[str, str]:
        """A pre-login nonce and its signed cookie value."""
        nonce = secrets.token_urlsafe(24)
        return nonce, self._login.dumps(nonce)

    def read_login_nonce(self, cookie: str | None) -> str | None:
        """The nonce of a pre-login cookie, or ``None``."""
        if not cookie:
            return None
        try:
            value = self._login.loads(cookie, max_age=LOGIN_COOKIE_MAX_AGE)
        except BadSignature:
            return None
        return value if isinstance(value, str) else None

    def csrf_token(self, purpose: str, value: str) -> str:
        """The CSRF token bound to a login token (``"session"``) or a nonce (``"login"``)."""
        return hmac.new(self._secret, f"csrf:{purpose}:{value}".encode(),
                        hashlib.sha256).hexdigest()

    def check_csrf(self, purpose: str, value: str | None, presented: str | None) -> bool:
        """Whether ``presented`` is the CSRF token of ``value`` (constant time)."""
        if not value or not presented:
            return False
        return hmac.compare_digest(self.csrf_token(purpose, value), presented)


class LoginThrottle:
    """At most ``max_failures`` failed logins per key within ``window_seconds``.

    Failures are rows of :class:`~node.db.models.LoginFailure`, so every web process
    (and every node behind a load balancer) counts the same failures. The key (username
    and client address) is stored only as its SHA-256. A successful login clears the
    key's failures; failures older than the window are deleted as new ones arrive.

    Parameters
    ----------
    sessions
        The node's database sessions.
    max_failures
        Failures allowed in the window; the next attempt is refused.
    window_seconds
        Length of the sliding window.
    """

    def __init__(self, sessions: sessionmaker[Session], max_failures: int,
                 window_seconds: float) -> None:
        self.sessions = sessions
        self.max_failures = max_failures
        self.window = dt.timedelta(seconds=window_seconds)

    @staticmethod
    def key_hash(key: str) -> str:
        """SHA-256 (hex) of a throttle key, as stored in the database."""
        return hashlib.sha256(key.encode("utf-8")).hexdigest()

    def retry_after(self, key: str, now: dt.datetime | None = None) -> float:
        """Seconds until ``key`` may try again; 0 when it may now."""
        now = now or utcnow()
        with self.sessions() as session:
            recent = session.scalars(
                select(LoginFailure.failed_at)
                .where(LoginFailure.key_hash == self.key_hash(key),
                       LoginFailure.failed_at > now - self.window)
                .order_by(LoginFailure.failed_at.desc())
                .limit(self.max_failures)
            ).all()
        if len(recent) < self.max_failures:
            return 0.0
        oldest_counted = recent[-1]
        return max((oldest_counted + self.window - now).total_seconds(), 1.0)

    def failed(self, key: str, now: dt.datetime | None = None) -> None:
        """Record a failed login for ``key`` (and forget failures past the window)."""
        now = now or utcnow()
        with self.sessions.begin() as session:
            session.execute(delete(LoginFailure)
                            .where(LoginFailure.failed_at <= now - self.window))
            session.add(LoginFailure(key_hash=self.key_hash(key), failed_at=now))

    def succeeded(self, key: str) -> None:
        """Forget the failures of ``key``."""
        with self.sessions.begin() as session:
            session.execute(delete(LoginFailure)
                            .where(LoginFailure.key_hash == self.key_hash(key)))


__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "CookieSigner",
    "LoginThrottle",
    "resolve_secret_key",
    "token_hash",
]
