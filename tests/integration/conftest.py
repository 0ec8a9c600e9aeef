"""Fixtures shared by the web app's integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.web_seed import WebEnv, build_web_env, fast_password_hashing


@pytest.fixture
def fast_hashing() -> Iterator[None]:
    """Cheap argon2 parameters while a test creates and checks passwords."""
    with fast_password_hashing():
        yield


@pytest.fixture
def web(tmp_path: Path, database_url: str, fast_hashing: None) -> Iterator[WebEnv]:
    """The web app on a fresh database (each backend), its storage and a test client."""
    env = build_web_env(tmp_path, database_url)
    yield env
    env.close()
