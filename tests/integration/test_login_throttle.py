"""Login throttling shared through the database by every web process, under concurrency.

Two web apps, each with its own engine and connection pool, stand for two web processes
(or two nodes behind a load balancer) over one database; concurrent attempts go over real
HTTP to uvicorn. Each test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError
from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine

from node.db.models import AuditEvent, LoginAttemptWindow
from node.db.types import utcnow
from node.users import use_password_hasher
from node.web.server import WebServer
from node.web.service_auth import issue_service_token
from node.web.throttle import LoginThrottle
from tests.integration.web_seed import (
    PASSWORD,
    WebEnv,
    audit_events,
    build_web_env,
    form_csrf,
    seed_user,
)

pytestmark = pytest.mark.usefixtures("fast_hashing")


class ProbingHasher(PasswordHasher):
    """Cheap Argon2id that, on every verify, counts the call and checks that no transaction
    holds the database: on SQLite another connection gets the write lock within 2 s (a
    transaction of the waiting login would hold it until the verify returns); with
    ``sole_request`` (one request at a time) no transaction is open on the app's engine."""

    def __init__(self, engine: Engine, *, delay: float = 0.0,
                 sole_request: bool = False) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.engine = engine
        self.delay = delay
        self.sole_request = sole_request
        self.calls = 0
        self.blocked: list[str] = []
        self.costs: list[bool] = []
        self._parameters = extract_parameters(self.hash("probe"))
        self._lock = threading.Lock()
        self._open: dict[int, int] = {}
        event.listen(engine, "begin", self._began)
        event.listen(engine, "commit", self._ended)
        event.listen(engine, "rollback", self._ended)

    def _began(self, _connection: Any) -> None:
        key = threading.get_ident()
        self._open[key] = self._open.get(key, 0) + 1

    def _ended(self, _connection: Any) -> None:
        key = threading.get_ident()
        self._open[key] = max(self._open.get(key, 0) - 1, 0)

    def _probe(self) -> None:
        if self.sole_request and any(self._open.values()):
            self.blocked.append("a transaction is open while hashing")
        if self.engine.dialect.name != "sqlite":
            return
        connection = sqlite3.connect(str(self.engine.url.database), timeout=2.0)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            self.blocked.append(str(exc))
        finally:
            connection.close()

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        with self._lock:
            self.calls += 1
            try:  # the work done: that of a real Argon2id hash with these parameters
                self.costs.append(extract_parameters(str(hash)) == self._parameters)
            except InvalidHashError:
                self.costs.append(False)
        self._probe()
        if self.delay:
            time.sleep(self.delay)
        return super().verify(hash, password)

    def close(self) -> None:
        event.remove(self.engine, "begin", self._began)
        event.remove(self.engine, "commit", self._ended)
        event.remove(self.engine, "rollback", self._ended)


@pytest.fixture
def two_apps(tmp_path: Path, database_url: str) -> Iterator[tuple[WebEnv, WebEnv]]:
    web = {"login_max_failures": 3, "login_window_seconds": 600}
    first = build_web_env(tmp_path / "a", database_url,
                          web={**web, "secret_key_file": str(tmp_path / "a.key")})
    second = build_web_env(tmp_path / "b", database_url,
                           web={**web, "secret_key_file": str(tmp_path / "b.key")})
    yield first, second
    first.close()
    second.close()


def _try(env: WebEnv, username: str, password: str) -> int:
    page = env.client.get("/login")
    response = env.client.post("/login", data={
        "username": username, "password": password, "csrf_token": form_csrf(page.text)})
    return response.status_code


def _rows(env: WebEnv) -> int:
    with env.database.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(LoginAttemptWindow)) or 0)


def test_failures_in_one_process_count_in_another(two_apps: tuple[WebEnv, WebEnv]) -> None:
    """Failures spread over two web apps add up; the fourth refuses even the right password,
    and only SHA-256 hashes of the keys are stored."""
    first, second = two_apps
    seed_user(first.database, "mcurie")
    assert _try(first, "mcurie", "wrong password 1") == 401
    assert _try(second, "mcurie", "wrong password 2") == 401
    assert _try(first, "MCurie", "wrong password 3") == 401
    assert _try(second, "mcurie", PASSWORD) == 429
    assert _try(first, "mcurie", PASSWORD) == 429
    assert len(audit_events(first.database, "login_failed")) == 3
    assert len(audit_events(first.database, "login_throttled")) == 1
    with first.database.sessions() as session:
        hashes = set(session.scalars(select(LoginAttemptWindow.key_hash)))
    assert hashes == {LoginThrottle.key_hash("user|mcurie|testclient"),
                      LoginThrottle.key_hash("address|testclient")}


def test_a_success_clears_and_old_windows_are_purged(
        two_apps: tuple[WebEnv, WebEnv]) -> None:
    """A successful login forgets the username's failures; a window that ended counts
    nothing and its row is purged."""
    first, second = two_apps
    seed_user(first.database, "mcurie")
    assert _try(first, "mcurie", "wrong password 1") == 401
    assert _try(second, "mcurie", "wrong password 2") == 401
    assert _try(second, "mcurie", PASSWORD) == 303
    assert first.client.cookies.get("radnode_session") is None
    throttle = LoginThrottle(first.database.sessions, max_failures=2, window_seconds=60)
    assert throttle.retry_after("mcurie", "testclient") == 0.0
    with first.database.sessions() as session:
        user_rows = session.scalar(select(func.count()).select_from(LoginAttemptWindow).where(
            LoginAttemptWindow.key_hash == throttle.key_hash("user|mcurie|testclient")))
    assert user_rows == 0

    long_ago = utcnow() - dt.timedelta(minutes=5)
    assert throttle.reserve("someone", "10.0.0.1", now=long_ago).allowed
    assert throttle.reserve("someone", "10.0.0.1", now=long_ago).allowed
    refused = throttle.reserve("someone", "10.0.0.1", now=long_ago + dt.timedelta(seconds=2))
    assert not refused.allowed and refused.retry_after > 50 and refused.first_refusal
    assert throttle.retry_after("someone", "10.0.0.1") == 0.0
    assert throttle.purge() >= 2  # the address and username rows of the ended window
    assert throttle.reserve("someone", "10.0.0.1").allowed


def test_concurrent_attempts_pass_the_limit_at_most(tmp_path: Path, database_url: str) -> None:
    """30 simultaneous logins over HTTP, 29 with wrong passwords: at most 5 passwords are
    checked, the others are refused with 429 before any hashing."""
    env = build_web_env(tmp_path, database_url, web={
        "secret_key_file": str(tmp_path / "k.key"), "login_max_failures": 5,
        "login_window_seconds": 600})
    hasher = ProbingHasher(env.database.engine, delay=0.1)
    seed_user(env.database, "mcurie")
    previous = use_password_hasher(hasher)
    server = WebServer(env.client.app, "127.0.0.1", 0)  # type: ignore[arg-type]
    server.start()
    barrier = threading.Barrier(30)
    statuses: list[int] = []

    def attempt(index: int) -> None:
        with httpx.Client(base_url=server.url, follow_redirects=False, timeout=60) as client:
            page = client.get("/login")
            data = {"username": "mcurie", "csrf_token": form_csrf(page.text),
                    "password": PASSWORD if index == 0 else f"wrong password {index}"}
            barrier.wait()
            statuses.append(client.post("/login", data=data).status_code)

    try:
        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        server.stop()
        use_password_hasher(previous)
        hasher.close()
        env.close()
    assert len(statuses) == 30
    checked = [s for s in statuses if s != 429]
    assert len(checked) <= 5 and set(checked) <= {401, 303}, statuses
    assert hasher.calls == len(checked) <= 5
    assert not hasher.blocked, hasher.blocked


def test_unknown_users_and_service_accounts_cost_one_verify(web: WebEnv) -> None:
    """Unknown, inactive and service-account usernames, and an empty password, run the same
    Argon2 verification as a real user's wrong password, with no transaction open."""
    seed_user(web.database, "mcurie")
    seed_user(web.database, "gone", active=False)
    with web.database.sessions.begin() as session:
        issue_service_token(session, "worker-1", actor="test")
    hasher = ProbingHasher(web.database.engine, sole_request=True)
    previous = use_password_hasher(hasher)
    try:
        for username, password in [("mcurie", "wrong password"), ("nobody", "whatever"),
                                   ("gone", PASSWORD), ("worker-1", "anything at all"),
                                   ("mcurie", "")]:
            before = hasher.calls
            assert _try(web, username, password) == 401
            assert hasher.calls == before + 1, username
            assert hasher.costs[-1], f"{username}: no full-cost verification"
        assert not hasher.blocked, hasher.blocked
    finally:
        use_password_hasher(previous)
        hasher.close()


def test_random_username_flood_is_bounded(tmp_path: Path, database_url: str) -> None:
    """A flood of logins with random usernames from one address stops being checked at the
    address limit: the throttle table and the audit trail grow by a bounded number of rows,
    and a real user at another address still signs in."""
    env = build_web_env(tmp_path, database_url, web={
        "secret_key_file": str(tmp_path / "k.key"), "login_max_failures": 5,
        "login_max_failures_per_address": 20, "login_window_seconds": 600})
    seed_user(env.database, "mcurie")
    try:
        statuses = [_try(env, f"user-{uuid.uuid4().hex[:10]}", "password guess")
                    for _ in range(60)]
        assert statuses.count(401) == 20 and statuses.count(429) == 40, statuses
        assert _rows(env) <= 21  # the address's row and one per checked username
        with env.database.sessions() as session:
            failures = session.scalar(select(func.count(AuditEvent.id)).where(
                AuditEvent.action.in_(["login_failed", "login_throttled"])))
        assert failures == 21
        other = ClientAt(env, "10.9.8.7")
        assert other.login("mcurie", PASSWORD) == 303
    finally:
        env.close()


class ClientAt:
    """Logins through the ASGI app from a given client address."""

    def __init__(self, env: WebEnv, address: str) -> None:
        from fastapi.testclient import TestClient
        self.client = TestClient(env.client.app, base_url="http://radnode.test",
                                 follow_redirects=False, client=(address, 50000))

    def login(self, username: str, password: str) -> int:
        page = self.client.get("/login")
        response = self.client.post("/login", data={
            "username": username, "password": password, "csrf_token": form_csrf(page.text)})
        return response.status_code

