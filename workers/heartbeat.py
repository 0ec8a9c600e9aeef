"""Worker heartbeats: each drafting process writes where it runs and what it holds.

Every ``[worker] heartbeat_seconds`` a thread of the worker process upserts its row of
``worker_heartbeats``: name, host, pid, device, GPU name and memory when the model is on
a GPU, the model bundle, the jobs in flight and the time of the beat. The monitoring
page and ``/metrics`` read these rows; a worker whose last beat is older than
``[worker] stale_after_seconds`` is shown as stale. A clean shutdown removes the row.

The beat never initialises CUDA: GPU figures are read only once the model has put torch
on the GPU (the process loads the model on its first task), so a worker that has not yet
drafted reports its configured device without memory figures.

A Celery worker starts its heartbeat on ``worker_ready`` (the pool is threads, so that
process runs the tasks) and stops it on ``worker_shutdown``; the node's embedded worker
starts one with its queue (:class:`node.jobs.queue.EmbeddedWorkQueue`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import WorkerHeartbeat
from node.db.types import utcnow
from node.logs import log_event
from node.periodic import PeriodicThread

logger = logging.getLogger(__name__)


class InFlightCounter:
    """How many drafting jobs this process is running now (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    @property
    def count(self) -> int:
        """Jobs running now."""
        with self._lock:
            return self._count

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count one job for the length of the ``with`` block."""
        with self._lock:
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1


#: The jobs in flight of this process (``workers.jobs.run_draft_job`` counts itself here).
JOBS_IN_FLIGHT = InFlightCounter()


@dataclass(frozen=True)
class DeviceStatus:
    """The device a worker drafts on and, on a GPU, its name and memory."""

    device: str
    gpu_name: str | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None


def device_status(requested: str) -> DeviceStatus:
    """Describe the drafting device without initialising CUDA.

    Parameters
    ----------
    requested
        ``[worker] device``: ``auto``, ``cpu`` or ``cuda[:N]``.

    Returns
    -------
    DeviceStatus
        ``cpu`` when torch sees no GPU; the GPU's name and memory (used by every process,
        from the driver) once this process has initialised CUDA; else the requested device.
    """
    torch: Any = sys.modules.get("torch")
    if requested == "cpu":
        return DeviceStatus("cpu")
    if torch is None:
        return DeviceStatus(requested)
    cuda = torch.cuda
    if not cuda.is_available():
        return DeviceStatus("cpu")
    if not cuda.is_initialized():
        return DeviceStatus(requested if requested.startswith("cuda") else "cuda")
    index = int(requested.split(":", 1)[1]) if requested.startswith("cuda:") \
        else int(cuda.current_device())
    free, total = cuda.mem_get_info(index)
    return DeviceStatus(f"cuda:{index}", str(cuda.get_device_name(index)),
                        int(total) - int(free), int(total))


class HeartbeatWriter:
    """Write this process's heartbeat row periodically.

    Parameters
    ----------
    sessions
        The worker's database sessions.
    worker_name
        Unique per worker process, e.g. Celery's ``radnode-draft-1@host``.
    requested_device
        ``[worker] device``.
    model_name, model_version
        The bundle the worker drafts with (``None`` when none is installed).
    period_seconds
        Time between beats.
    counter
        Jobs in flight of this process.
    probe
        Reads the device status (tests give a fixed one).
    """

    def __init__(self, sessions: sessionmaker[Session], *, worker_name: str,
                 requested_device: str, model_name: str | None, model_version: str | None,
                 period_seconds: float, counter: InFlightCounter = JOBS_IN_FLIGHT,
                 probe: Callable[[str], DeviceStatus] = device_status) -> None:
        self.sessions = sessions
        self.worker_name = worker_name[:128]
        self.host = socket.gethostname()[:255]
        self.pid = os.getpid()
        self.requested_device = requested_device
        self.model_name = model_name
        self.model_version = model_version
        self.counter = counter
        self.probe = probe
        self.started_at = utcnow()
        self._periodic = PeriodicThread("heartbeat", period_seconds, self.beat)

    def beat(self) -> None:
        """Upsert the row with the current status and time."""
        status = self.probe(self.requested_device)
        values = {
            "host": self.host, "pid": self.pid, "device": status.device[:32],
            "gpu_name": status.gpu_name[:128] if status.gpu_name else None,
            "gpu_memory_used_bytes": status.memory_used_bytes,
            "gpu_memory_total_bytes": status.memory_total_bytes,
            "model_name": self.model_name, "model_version": self.model_version,
            "jobs_in_flight": self.counter.count, "started_at": self.started_at,
            "last_beat_at": utcnow(),
        }
        try:
            with self.sessions.begin() as session:
                row = session.scalar(select(WorkerHeartbeat)
                                     .where(WorkerHeartbeat.worker_name == self.worker_name)
                                     .with_for_update())
                if row is None:
                    session.add(WorkerHeartbeat(worker_name=self.worker_name, **values))
                else:
                    for key, value in values.items():
                        setattr(row, key, value)
        except IntegrityError:  # another process of the same name inserted first
            log_event(logger, logging.WARNING, "heartbeat_name_taken",
                      worker=self.worker_name)

    def start(self) -> None:
        """Beat now, then every period, in a daemon thread."""
        self._periodic.start(run_now=True)
        log_event(logger, logging.INFO, "heartbeat_started", worker=self.worker_name)

    def stop(self) -> None:
        """Stop beating and remove the row (a clean shutdown is not a lost worker)."""
        self._periodic.stop()
        try:
            with self.sessions.begin() as session:
                session.execute(delete(WorkerHeartbeat)
                                .where(WorkerHeartbeat.worker_name == self.worker_name,
                                       WorkerHeartbeat.pid == self.pid))
        except Exception:
            logger.exception("heartbeat_remove_failed")


_celery_heartbeat: list[HeartbeatWriter] = []


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    from node.config import load_settings
    from workers.context import process_job_context

    settings = load_settings()
    context = process_job_context()
    writer = HeartbeatWriter(
        context.sessions, worker_name=str(getattr(sender, "hostname", "") or socket.gethostname()),
        requested_device=settings.worker.device, model_name=context.model.name,
        model_version=context.model.version, period_seconds=settings.worker.heartbeat_seconds,
    )
    writer.start()
    _celery_heartbeat.append(writer)


def _on_worker_shutdown(**_: Any) -> None:
    while _celery_heartbeat:
        _celery_heartbeat.pop().stop()


def install_celery_heartbeat() -> None:
    """Connect the heartbeat to the Celery worker's ready and shutdown signals."""
    from celery.signals import worker_ready, worker_shutdown

    worker_ready.connect(_on_worker_ready, weak=False, dispatch_uid="radnode-heartbeat-start")
    worker_shutdown.connect(_on_worker_shutdown, weak=False,
                            dispatch_uid="radnode-heartbeat-stop")


__all__ = [
    "JOBS_IN_FLIGHT",
    "DeviceStatus",
    "HeartbeatWriter",
    "InFlightCounter",
    "device_status",
    "install_celery_heartbeat",
]
