"""Engine and session factory for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from node.db.migrate import upgrade

if TYPE_CHECKING:
    from node.config import Settings


def _prepare_sqlite(engine: Engine) -> None:
    """Durable, concurrent-safe SQLite: WAL, full fsync, foreign keys, write locks up front."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # BEGIN IMMEDIATE takes the write lock at the start, so two threads never
        # deadlock upgrading read locks; the busy timeout makes them queue instead.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_db_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine for ``url`` with the settings radnode relies on.

    Parameters
    ----------
    url
        SQLAlchemy URL: ``sqlite:///path`` or ``postgresql+psycopg://...``.
        A plain ``postgresql://`` URL is given the psycopg 3 driver.
    echo
        Log every SQL statement (development only: statements carry PHI).

    Returns
    -------
    Engine
        The configured engine. For SQLite the parent folder is created. Statement
        parameters never appear in error messages or logs (``hide_parameters``): they
        carry patient data typed into searches and forms.
    """
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed, echo=echo, hide_parameters=True,
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        _prepare_sqlite(engine)
        return engine
    return create_engine(
        parsed,
        echo=echo,
        hide_parameters=True,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        connect_args={"connect_timeout": 5},
    )


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Return a session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@dataclass
class Database:
    """An engine and its session factory."""

    engine: Engine
    sessions: sessionmaker[Session]

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = False) -> Database:
        """Connect (and optionally migrate) the configured database."""
        engine = create_db_engine(settings.database.url, echo=settings.database.echo)
        if migrate:
            upgrade(engine)
        return cls(engine, create_session_factory(engine))
