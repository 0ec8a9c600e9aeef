"""Wiring: build the node's services from settings."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from node.assembly.service import AssemblyService
from node.config import Settings
from node.db.engine import Database
from node.dicom.scp import DicomListener
from node.dicom.shared_admission import SharedAdmissionCounts
from node.exports.service import ExportService
from node.jobs.bundle_identity import read_bundle_identity
from node.jobs.queue import CeleryWorkQueue, EmbeddedWorkQueue, WorkQueue
from node.jobs.scheduler import DraftScheduler, Reconciler
from node.listener_processes import ListenerProcesses, build_listener
from node.logs import log_event
from node.operations import OperationsMonitor
from node.reports.sr_index import backfill_report_sr_index
from node.retention import RetentionService
from node.storage import InstanceStore

if TYPE_CHECKING:
    from node.web.server import WebServer
    from workers.jobs import JobContext

logger = logging.getLogger(__name__)


def embedded_worker_name(settings: Settings) -> str:
    """The heartbeat name of this node's embedded worker, unique per node on a host.

    Parameters
    ----------
    settings
        The node's settings: its DICOM port tells two nodes on one host apart.

    Returns
    -------
    str
        ``embedded@HOST:PORT``; with port 0 (a port the system picks) the process id
        and a random suffix stand in for the port, ``embedded@HOST:PID-XXXXXXXX``.
    """
    host = socket.gethostname()
    if settings.dicom.port:
        return f"embedded@{host}:{settings.dicom.port}"
    return f"embedded@{host}:{os.getpid()}-{uuid.uuid4().hex[:8]}"


def build_work_queue(settings: Settings, database: Database) -> WorkQueue:
    """Celery over Redis when a broker is configured, else an in-process worker."""
    if settings.broker.url:
        return CeleryWorkQueue(settings.broker)
    from workers.context import build_job_context
    from workers.heartbeat import HeartbeatWriter
    from workers.jobs import run_draft_job

    contexts: list[JobContext] = []
    identity = read_bundle_identity(settings.model.bundle)
    heartbeat = HeartbeatWriter(
        database.sessions, worker_name=embedded_worker_name(settings),
        requested_device=settings.worker.device,
        model_name=identity.name if identity else None,
        model_version=identity.version if identity else None,
        period_seconds=settings.worker.heartbeat_seconds,
        lost_after_seconds=settings.worker.lost_after_seconds,
        health=lambda: getattr(contexts[0].drafter, "broken_reason", None) if contexts
        else None,
    )

    def context() -> JobContext:
        if not contexts:  # built on first use: the model may be installed after start
            built = build_job_context(settings, sessions=database.sessions)
            built.holder = heartbeat.identity
            contexts.append(built)
        return contexts[0]

    def run_job(job_id: int) -> float | None:
        return run_draft_job(context(), job_id)

    def warm_up() -> None:
        if identity is not None:
            bundle = getattr(context().drafter, "bundle", None)
            if callable(bundle):
                bundle()

    # The heartbeat starts with the queue, releasing the jobs this node's previous run
    # held, so the reconciler's first pass at start hands them out again at once; the
    # worker thread loads the model before taking the first job.
    return EmbeddedWorkQueue(run_job, heartbeat, warm_up)


@dataclass
class NodeServices:
    """The long-running parts of ``radnode serve``."""

    settings: Settings
    database: Database
    store: InstanceStore
    listener: DicomListener
    assembly: AssemblyService
    work_queue: WorkQueue
    reconciler: Reconciler
    exporter: ExportService
    retention: RetentionService
    operations: OperationsMonitor
    web: WebServer | None = None
    listener_processes: ListenerProcesses | None = None
    """The listener processes beside this one (``[dicom] listener_processes`` above 1)."""
    _started: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, *, with_web: bool = False) -> NodeServices:
        """Create every service; nothing listens until :meth:`start`.

        ``with_web`` adds the web app on ``[web] host`` and ``port`` (``radnode serve``).
        """
        database = Database.from_settings(settings, migrate=settings.database.migrate_on_start)
        store = InstanceStore(
            settings.storage.root,
            min_free_mb=settings.storage.min_free_mb,
            max_used_percent=settings.storage.max_used_percent,
        )
        exporter = ExportService.from_settings(settings, database.sessions, store)
        processes = settings.dicom.listener_processes
        shared_admission = SharedAdmissionCounts.create(processes) if processes > 1 else None
        listener = build_listener(settings, database.sessions, store,
                                  record_report=exporter.ledger.record_report,
                                  shared_admission=shared_admission)
        listener_processes = (ListenerProcesses(settings, shared_admission)
                              if shared_admission is not None else None)
        work_queue = build_work_queue(settings, database)
        scheduler = DraftScheduler(
            database.sessions, work_queue, read_bundle_identity(settings.model.bundle)
        )
        assembly = AssemblyService(
            settings.assembly, database.sessions, on_stable=scheduler.on_stable
        )
        reconciler = Reconciler(settings.jobs, scheduler)
        retention = RetentionService(settings.retention, database.sessions, store)
        operations = OperationsMonitor(settings, database.sessions)
        web = None
        if with_web:
            from node.web import create_app
            from node.web.server import WebServer

            web = WebServer(create_app(settings, database, store, exporter, work_queue,
                                       operations),
                            settings.web.host, settings.web.port)
        return cls(settings, database, store, listener, assembly, work_queue, reconciler,
                   exporter, retention, operations, web, listener_processes)

    def start(self) -> None:
        """Start the DICOM listener, assembly, the reconciler, the export loop, the alert
        checks and the web."""
        swept = self.store.sweep_temporaries()
        if swept:
            log_event(logger, logging.WARNING, "partial_writes_removed", count=swept)
        indexed = backfill_report_sr_index(self.database.sessions, self.store)
        if indexed:
            log_event(logger, logging.INFO, "report_srs_indexed", count=indexed)
        # Whatever the queue held may be gone (an in-process queue, a broker restarted with
        # the host): every waiting job is enqueued once now; claims make copies harmless.
        self.reconciler.start(requeue_all_waiting=True)
        self._started.append("reconciler")
        self.listener.start()
        self._started.append("listener")
        if self.listener_processes is not None:
            # Raises, once the processes started are stopped, when one does not listen.
            self._started.append("listener_processes")
            self.listener_processes.start(self.listener.port)
        self.assembly.start()
        self._started.append("assembly")
        self.exporter.start()
        self._started.append("exporter")
        self.retention.start()
        self._started.append("retention")
        self.operations.start()
        self._started.append("operations")
        if self.web is not None:
            self.web.start()
            self._started.append("web")

    def stop(self) -> None:
        """Stop in reverse order: no new requests or instances, then the loops, the queue."""
        if "web" in self._started and self.web is not None:
            self.web.stop()
        if "listener_processes" in self._started and self.listener_processes is not None:
            self.listener_processes.stop()
        if "listener" in self._started:
            self.listener.stop()
        if "assembly" in self._started:
            self.assembly.stop()
        if "reconciler" in self._started:
            self.reconciler.stop()
        self.work_queue.close()
        if "exporter" in self._started:
            self.exporter.stop()
        if "retention" in self._started:
            self.retention.stop()
        if "operations" in self._started:
            self.operations.stop()
        self._started.clear()
        self.database.engine.dispose()
