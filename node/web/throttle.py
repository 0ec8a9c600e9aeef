"""Login throttling shared through the database by every web process.

Two keys limit each attempt: the client address (``max_failures_per_address`` in the
window, whatever the usernames) and the username with the address (``max_failures``).
An attempt is *reserved* before its password is checked: one conditional ``UPDATE``
per key adds it to the key's counter only while the counter is below the limit, so any
number of concurrent attempts yields at most the limit of password checks, on SQLite
(whose write transactions run one at a time) and on PostgreSQL (where the row lock of the
``UPDATE`` orders them). A success takes its attempt back and clears the username's
counter.

Failures are kept as one row per key and window (:class:`~node.db.models.LoginAttemptWindow`),
not one row per failure; a username row is made only for attempts the address allowed,
and rows of ended windows are purged, so a flood of logins with random usernames adds at
most ``max_failures_per_address`` rows per address and window. Keys are stored only as
their SHA-256.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
from dataclasses import dataclass

from sqlalchemy import case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import LoginAttemptWindow
from node.db.types import utcnow


@dataclass(frozen=True)
class Reservation:
    """The outcome of :meth:`LoginThrottle.reserve`."""

    allowed: bool
    """Whether the password may be checked."""
    retry_after: float
    """Seconds until the refusing key's window ends (0 when allowed)."""
    first_refusal: bool
    """This is the first refusal of the refusing key in its window (audit it once)."""
    user_key: str
    address_key: str


def _insert(session: Session, key_hash: str, now: dt.datetime) -> None:
    """Make the key's row if missing (never waits on, nor changes, an existing row)."""
    values = {"key_hash": key_hash, "window_start": now, "failures": 0, "refusals": 0}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(postgresql.insert(LoginAttemptWindow).values(**values)
                        .on_conflict_do_nothing(index_elements=["key_hash"]))
    else:
        session.execute(sqlite.insert(LoginAttemptWindow).values(**values)
                        .on_conflict_do_nothing(index_elements=["key_hash"]))


class LoginThrottle:
    """Reserve login attempts per username and address, and per address.

    Parameters
    ----------
    sessions
        The node's database sessions.
    max_failures
        Attempts allowed per username and client address within the window.
    window_seconds
        Length of a window; it starts at the key's first attempt.
    max_failures_per_address
        Attempts allowed per client address within the window, whatever the usernames.
    """

    def __init__(self, sessions: sessionmaker[Session], max_failures: int,
                 window_seconds: float, max_failures_per_address: int = 100) -> None:
        self.sessions = sessions
        self.max_failures = max_failures
        self.max_failures_per_address = max(max_failures_per_address, max_failures)
        self.window = dt.timedelta(seconds=window_seconds)
        self._purge_lock = threading.Lock()
        self._next_purge = 0.0

    @staticmethod
    def key_hash(key: str) -> str:
        """SHA-256 (hex) of a throttle key, as stored in the database."""
        return hashlib.sha256(key.encode("utf-8")).hexdigest()

    @staticmethod
    def user_key(username: str, address: str) -> str:
        """The throttle key of a username at a client address."""
        return f"user|{username.lower()}|{address}"

    @staticmethod
    def address_key(address: str) -> str:
        """The throttle key of a client address."""
        return f"address|{address}"

    def _count(self, session: Session, key: str, limit: int,
               now: dt.datetime) -> tuple[bool, float, bool]:
        """Add an attempt to ``key`` if below ``limit``; (allowed, retry after, first refusal)."""
        key_hash = self.key_hash(key)
        _insert(session, key_hash, now)
        table = LoginAttemptWindow
        ended = table.window_start <= now - self.window
        counted = session.execute(
            update(table)
            .where(table.key_hash == key_hash, ended | (table.failures < limit))
            .values(failures=case((ended, 1), else_=table.failures + 1),
                    refusals=case((ended, 0), else_=table.refusals),
                    window_start=case((ended, now), else_=table.window_start))
            .returning(table.failures)
        ).first()
        if counted is not None:
            return True, 0.0, False
        refused = session.execute(
            update(table).where(table.key_hash == key_hash)
            .values(refusals=table.refusals + 1)
            .returning(table.refusals, table.window_start)
        ).first()
        if refused is None:  # purged meanwhile by another process: a fresh window
            return self._count(session, key, limit, now)
        refusals, window_start = refused
        wait = max((window_start + self.window - now).total_seconds(), 1.0)
        return False, wait, int(refusals) == 1

    def reserve(self, username: str, address: str,
                now: dt.datetime | None = None) -> Reservation:
        """Count an attempt against the address and the username before the check.

        Parameters
        ----------
        username
            The username typed (any text; only its hash is stored).
        address
            The client address.
        now
            The time of the attempt (tests).

        Returns
        -------
        Reservation
            Whether the password may be checked; when refused, nothing is counted
            against the username and the address's counter is unchanged.
        """
        now = now or utcnow()
        self._purge_ended(now)
        user_key, address_key = self.user_key(username, address), self.address_key(address)
        with self.sessions.begin() as session:
            allowed, wait, first = self._count(session, address_key,
                                               self.max_failures_per_address, now)
            if allowed:
                allowed, wait, first = self._count(session, user_key, self.max_failures, now)
                if not allowed:  # the attempt is not made: give the address's back
                    self._give_back(session, address_key)
        return Reservation(allowed, wait, first, user_key, address_key)

    @staticmethod
    def _give_back(session: Session, key: str) -> None:
        table = LoginAttemptWindow
        session.execute(update(table)
                        .where(table.key_hash == LoginThrottle.key_hash(key),
                               table.failures > 0)
                        .values(failures=table.failures - 1))

    def succeeded(self, reservation: Reservation) -> None:
        """A reserved attempt succeeded: clear the username's count, give the address's back."""
        table = LoginAttemptWindow
        with self.sessions.begin() as session:
            self._give_back(session, reservation.address_key)
            session.execute(delete(table)
                            .where(table.key_hash == self.key_hash(reservation.user_key)))

    def retry_after(self, username: str, address: str,
                    now: dt.datetime | None = None) -> float:
        """Seconds until the username may try again from ``address`` (0: now); reads only."""
        now = now or utcnow()
        table = LoginAttemptWindow
        waits = [0.0]
        with self.sessions() as session:
            for key, limit in ((self.address_key(address), self.max_failures_per_address),
                               (self.user_key(username, address), self.max_failures)):
                row = session.execute(select(table.failures, table.window_start)
                                      .where(table.key_hash == self.key_hash(key))).first()
                if row is not None and row.failures >= limit \
                        and row.window_start > now - self.window:
                    waits.append(max((row.window_start + self.window - now).total_seconds(),
                                     1.0))
        return max(waits)

    # -- bearer tokens -------------------------------------------------------------------

    @staticmethod
    def bearer_key(address: str) -> str:
        """The throttle key of refused bearer tokens from a client address."""
        return f"bearer|{address}"

    def bearer_check(self, address: str, now: dt.datetime | None = None) -> Reservation:
        """Whether ``address`` may present a bearer token now (before it is looked up).

        A token is refused unseen once the address has had ``max_failures_per_address``
        refused tokens in the window, as a login is. Unlike a login, an allowed attempt
        is not reserved (a viewer sends many requests, each with its token): only a
        refused token is counted (:meth:`bearer_failed`), so the counter never passes the
        limit, though requests already in flight when it is reached are still looked up.
        """
        now = now or utcnow()
        key = self.bearer_key(address)
        key_hash = self.key_hash(key)
        table = LoginAttemptWindow
        with self.sessions() as session:
            row = session.execute(select(table.failures, table.window_start)
                                  .where(table.key_hash == key_hash)).first()
        if row is None or row.failures < self.max_failures_per_address \
                or row.window_start <= now - self.window:
            return Reservation(True, 0.0, False, "", key)
        with self.sessions.begin() as session:
            refused = session.execute(
                update(table).where(table.key_hash == key_hash)
                .values(refusals=table.refusals + 1)
                .returning(table.refusals, table.window_start)).first()
        if refused is None:  # purged meanwhile: a fresh window
            return Reservation(True, 0.0, False, "", key)
        wait = max((refused.window_start + self.window - now).total_seconds(), 1.0)
        return Reservation(False, wait, int(refused.refusals) == 1, "", key)

    def bearer_failed(self, address: str, now: dt.datetime | None = None) -> None:
        """Count a refused bearer token against ``address``."""
        now = now or utcnow()
        self._purge_ended(now)
        with self.sessions.begin() as session:
            self._count(session, self.bearer_key(address), self.max_failures_per_address, now)

    def purge(self, now: dt.datetime | None = None) -> int:
        """Delete the rows of windows that ended; return how many."""
        now = now or utcnow()
        table = LoginAttemptWindow
        with self.sessions.begin() as session:
            stale = (select(table.key_hash).where(table.window_start <= now - self.window)
                     .limit(1000).with_for_update(skip_locked=True))
            result = session.execute(delete(table).where(table.key_hash.in_(stale))
                                     .execution_options(synchronize_session=False))
        return int(getattr(result, "rowcount", 0) or 0)

    def _purge_ended(self, now: dt.datetime) -> None:
        """Purge at most once per tenth of a window in this process."""
        with self._purge_lock:
            if time.monotonic() < self._next_purge:
                return
            self._next_purge = time.monotonic() + self.window.total_seconds() / 10
        self.purge(now)


__all__ = ["LoginThrottle", "Reservation"]
