"""Login cookies, CSRF tokens and the signing key.

* The browser holds a random login token signed with the node's secret key (itsdangerous);
  the database holds only its SHA-256 (:class:`~node.db.models.WebSession`), so a login can
  be ended server-side and a stolen database yields no usable cookie.
* CSRF tokens are HMACs of the login token (or, before login, of a signed random nonce held
  in a separate cookie): a POST must carry the token that only pages of this origin see.
* Login throttling is in :mod:`node.web.throttle`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

from node.config import WebSettings

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


__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "CookieSigner",
    "resolve_secret_key",
    "token_hash",
]
