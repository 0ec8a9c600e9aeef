"""Shared fixtures: real databases (SQLite and PostgreSQL), settings, a running node."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from node.config import Settings, load_settings
from node.runtime import Database, NodeServices

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

POSTGRES_ADMIN_URL = os.environ.get(
    "RADNODE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REPO_ROOT = Path(__file__).resolve().parent.parent


DEMO_BUNDLE_DIR = REPO_ROOT / "var" / "models" / "demo"


def _require_programs(*names: str) -> None:
    missing = [n for n in names if shutil.which(n, path=os.environ.get("PATH", "") + ":/usr/sbin")
               is None]
    assert not missing, f"missing {missing}: run `make system-deps`"


@pytest.fixture(scope="session")
def dcmtk_installed() -> None:
    """DCMTK is part of the test install; its absence is a failure, not a skip."""
    _require_programs("storescu", "storescp", "echoscu", "findscu", "getscu", "movescu",
                      "dcmcjpeg", "dcmcjpls", "dcmcrle")


@pytest.fixture(scope="session")
def orthanc_installed() -> None:
    """Orthanc is part of the test install (``make system-deps``)."""
    _require_programs("Orthanc")


@pytest.fixture(scope="session")
def openssl_installed() -> None:
    """openssl makes the throw-away certificates of TLS tests."""
    _require_programs("openssl")


@pytest.fixture(scope="session")
def demo_bundle_built() -> None:
    """The demo model bundle that ``make demo-model`` builds before the tests."""
    assert (DEMO_BUNDLE_DIR / "manifest.json").is_file(), "run `make demo-model` first"


def free_port() -> int:
    """Return a TCP port that is free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their settings explicitly; ignore the developer's environment."""
    for key in list(os.environ):
        if key.startswith("RADNODE_") and key != "RADNODE_TEST_POSTGRES_URL":
            monkeypatch.delenv(key, raising=False)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search path is a fresh schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each database test runs once on SQLite and once on PostgreSQL, isolated."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'radnode.db'}"
    return str(request.getfixturevalue("postgres_url"))


def make_settings(tmp_path: Path, database_url: str, **sections: Any) -> Settings:
    """Settings for a node living entirely under ``tmp_path``."""
    base: dict[str, Any] = {
        "dicom": {"port": 0, "bind_address": "127.0.0.1"},
        "database": {"url": database_url},
        "storage": {"root": str(tmp_path / "storage"), "min_free_mb": 1},
        "assembly": {"quiet_seconds": 2, "poll_seconds": 0.1},
        "logging": {"format": "text", "level": "INFO"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return load_settings(**base)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Default test settings on the parametrised database."""
    return make_settings(tmp_path, database_url)


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    """A migrated database."""
    db = Database.from_settings(settings, migrate=True)
    yield db
    db.engine.dispose()


@pytest.fixture
def node(settings: Settings) -> Iterator[NodeServices]:
    """A running node (DICOM listener on a free port, assembly loop) in this process."""
    services = NodeServices.build(settings)
    services.start()
    yield services
    services.stop()
