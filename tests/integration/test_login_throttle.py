"""Login throttling shared through the database by every web process.

Two web apps, each with its own engine and connection pool, stand for two web processes
(or two nodes behind a load balancer) over one database; each test runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from node.db.models import LoginFailure
from node.db.types import utcnow
from node.web.security import LoginThrottle
from tests.integration.web_seed import (
    PASSWORD,
    WebEnv,
    audit_events,
    build_web_env,
    form_csrf,
    seed_user,
)

pytestmark = pytest.mark.usefixtures("fast_hashing")


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


def test_failures_in_one_process_count_in_another(two_apps: tuple[WebEnv, WebEnv]) -> None:
    """Failures spread over two web apps add up; the third refuses even the right password,
    and only the SHA-256 of the username and address is stored."""
    first, second = two_apps
    seed_user(first.database, "mcurie")
    assert _try(first, "mcurie", "wrong password 1") == 401
    assert _try(second, "mcurie", "wrong password 2") == 401
    assert _try(first, "MCurie", "wrong password 3") == 401
    assert _try(second, "mcurie", PASSWORD) == 429
    assert _try(first, "mcurie", PASSWORD) == 429
    assert len(audit_events(first.database, "login_failed")) == 3
    with first.database.sessions() as session:
        hashes = set(session.scalars(select(LoginFailure.key_hash)))
    assert hashes == {LoginThrottle.key_hash("mcurie|testclient")}


def test_a_success_clears_and_old_failures_expire(two_apps: tuple[WebEnv, WebEnv]) -> None:
    """A successful login forgets the key's failures; failures past the window neither
    count nor stay in the table."""
    first, second = two_apps
    seed_user(first.database, "mcurie")
    assert _try(first, "mcurie", "wrong password 1") == 401
    assert _try(second, "mcurie", "wrong password 2") == 401
    assert _try(second, "mcurie", PASSWORD) == 303
    with first.database.sessions() as session:
        assert session.scalar(select(func.count(LoginFailure.id))) == 0

    throttle = LoginThrottle(first.database.sessions, max_failures=2, window_seconds=60)
    long_ago = utcnow() - dt.timedelta(minutes=5)
    throttle.failed("someone|10.0.0.1", now=long_ago)
    throttle.failed("someone|10.0.0.1", now=long_ago + dt.timedelta(seconds=1))
    assert throttle.retry_after("someone|10.0.0.1", now=long_ago + dt.timedelta(seconds=2)) > 50
    assert throttle.retry_after("someone|10.0.0.1") == 0.0
    throttle.failed("other|10.0.0.2")
    with first.database.sessions() as session:
        assert session.scalar(select(func.count(LoginFailure.id))) == 1
