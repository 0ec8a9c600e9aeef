"""Wiring: build the node's services from settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from node.assembly.service import AssemblyService, StableHook
from node.config import Settings
from node.db.engine import create_db_engine, create_session_factory
from node.db.migrate import upgrade
from node.dicom.ingest import InstanceIngestor
from node.dicom.scp import DicomListener
from node.logs import log_event
from node.storage import InstanceStore

logger = logging.getLogger(__name__)


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


@dataclass
class NodeServices:
    """The long-running parts of ``radnode serve``."""

    settings: Settings
    database: Database
    store: InstanceStore
    listener: DicomListener
    assembly: AssemblyService
    _started: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls, settings: Settings, *, on_stable: StableHook | None = None
    ) -> NodeServices:
        """Create every service; nothing listens until :meth:`start`."""
        database = Database.from_settings(settings, migrate=settings.database.migrate_on_start)
        store = InstanceStore(
            settings.storage.root,
            min_free_mb=settings.storage.min_free_mb,
            max_used_percent=settings.storage.max_used_percent,
        )
        ingestor = InstanceIngestor(store, database.sessions)
        listener = DicomListener(settings.dicom, ingestor)
        assembly = AssemblyService(settings.assembly, database.sessions, on_stable=on_stable)
        return cls(settings, database, store, listener, assembly)

    def start(self) -> None:
        """Start the DICOM listener and the assembly loop."""
        swept = self.store.sweep_temporaries()
        if swept:
            log_event(logger, logging.WARNING, "partial_writes_removed", count=swept)
        self.listener.start()
        self._started.append("listener")
        self.assembly.start()
        self._started.append("assembly")

    def stop(self) -> None:
        """Stop in reverse order: no new instances, then the loops."""
        if "listener" in self._started:
            self.listener.stop()
        if "assembly" in self._started:
            self.assembly.stop()
        self._started.clear()
        self.database.engine.dispose()
