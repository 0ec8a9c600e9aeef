"""Worker heartbeats: each drafting process writes where it runs and what it holds.

Every ``[worker] heartbeat_seconds`` a thread of the worker process upserts its row of
``worker_heartbeats``: name, host, pid, device, GPU name and memory when the model is on
a GPU, the model bundle, the jobs in flight and the time of the beat. The monitoring
page and ``/metrics`` read these rows; a worker whose last beat is older than
``[worker] stale_after_seconds`` is shown as stale. A clean shutdown removes the row.

The beat never initialises CUDA: GPU figures are read only once the model has put torch
on the GPU (``radnode worker`` loads the model before it consumes; the embedded worker in
its thread at start), so until then a worker reports its configured device without memory
figures.

Each beat also renews the lease of the jobs this process is drafting: a job claimed by a
beating worker is held for ``[worker] lost_after_seconds`` past the last beat, so a worker
killed, frozen or cut off loses its jobs to the others within that time, however long a
draft takes. Each process start has its own *incarnation*: a worker restarted under the
same name (on the same host) releases the jobs its previous run held at once.

A Celery worker starts its heartbeat on ``worker_ready`` (the pool is threads, so that
process runs the tasks) and stops it on ``worker_shutdown``; the node's embedded worker
starts one with its queue (:class:`node.jobs.queue.EmbeddedWorkQueue`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import Job, WorkerHeartbeat
from node.db.types import utcnow
from node.logs import log_event
from node.periodic import PeriodicThread
from node.states import JobState

logger = logging.getLogger(__name__)


class InFlightCounter:
    """The drafting jobs this process is running now (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._job_ids: dict[int, int] = {}

    @property
    def count(self) -> int:
        """Jobs running now."""
        with self._lock:
            return self._count

    def job_ids(self) -> list[int]:
        """The ids of the jobs running now (their leases are renewed at each beat)."""
        with self._lock:
            return sorted(self._job_ids)

    @contextmanager
    def track(self, job_id: int | None = None) -> Iterator[None]:
        """Count one job, ``job_id`` if given, for the length of the ``with`` block."""
        with self._lock:
            self._count += 1
            if job_id is not None:
                self._job_ids[job_id] = self._job_ids.get(job_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1
                if job_id is not None:
                    left = self._job_ids.pop(job_id, 1) - 1
                    if left > 0:
                        self._job_ids[job_id] = left


@dataclass(frozen=True)
class WorkerIdentity:
    """Who claims a job: the worker's name, this process's incarnation, and how long a
    claimed job stays held without a beat."""

    name: str
    incarnation: str
    lease_seconds: float


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    lost_after_seconds
        The lease each beat gives this process's running jobs (``[worker]
        lost_after_seconds``); at least twice ``period_seconds``.
    counter
        Jobs in flight of this process.
    probe
        Reads the device status (tests give a fixed one).
    health
        Why this worker cannot draft (its model failed to load), or ``None``: the
        monitoring page shows such a worker as broken.
    """

    def __init__(self, sessions: sessionmaker[Session], *, worker_name: str,
                 requested_device: str, model_name: str | None, model_version: str | None,
                 period_seconds: float, lost_after_seconds: float | None = None,
                 counter: InFlightCounter = JOBS_IN_FLIGHT,
                 probe: Callable[[str], DeviceStatus] = device_status,
                 health: Callable[[], str | None] | None = None) -> None:
        self.sessions = sessions
        self.health = health
        self.worker_name = worker_name[:128]
        self.incarnation = uuid.uuid4().hex
        self.lost_after_seconds = lost_after_seconds or 3 * period_seconds
        self.host = socket.gethostname()[:255]
        self.pid = os.getpid()
        self.requested_device = requested_device
        self.model_name = model_name
        self.model_version = model_version
        self.counter = counter
        self.probe = probe
        self.started_at = utcnow()
        self._periodic = PeriodicThread("heartbeat", period_seconds, self.beat)

    @property
    def identity(self) -> WorkerIdentity:
        """What this process writes on the jobs it claims."""
        return WorkerIdentity(self.worker_name, self.incarnation, self.lost_after_seconds)

    def beat(self) -> None:
        """Upsert the row with the current status and time; renew the running jobs' leases."""
        status = self.probe(self.requested_device)
        now = utcnow()
        values = {
            "host": self.host, "pid": self.pid, "device": status.device[:32],
            "gpu_name": status.gpu_name[:128] if status.gpu_name else None,
            "gpu_memory_used_bytes": status.memory_used_bytes,
            "gpu_memory_total_bytes": status.memory_total_bytes,
            "model_name": self.model_name, "model_version": self.model_version,
            "jobs_in_flight": self.counter.count, "started_at": self.started_at,
            "last_beat_at": now, "incarnation": self.incarnation,
            "broken_reason": self.health() if self.health is not None else None,
        }
        job_ids = self.counter.job_ids()
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
                if job_ids:
                    session.execute(
                        update(Job)
                        .where(Job.id.in_(job_ids), Job.state == JobState.RUNNING,
                               Job.worker_incarnation == self.incarnation)
                        .values(lease_expires_at=now + dt.timedelta(
                            seconds=self.lost_after_seconds))
                        .execution_options(synchronize_session=False))
        except IntegrityError:  # another process of the same name inserted first
            log_event(logger, logging.WARNING, "heartbeat_name_taken",
                      worker=self.worker_name)

    def release_previous_incarnation(self) -> int:
        """End the leases of the jobs this worker's previous run still holds.

        The previous run is known to be gone when the heartbeat row of this name was
        written on this host by a process that no longer exists (or had this very pid, as
        in a restarted container). Its RUNNING jobs get an expired lease, so the node's
        reconciler hands them out again on its next pass.

        Returns
        -------
        int
            How many jobs were released.
        """
        now = utcnow()
        with self.sessions.begin() as session:
            row = session.scalar(select(WorkerHeartbeat)
                                 .where(WorkerHeartbeat.worker_name == self.worker_name))
            if row is None or row.incarnation == self.incarnation or row.host != self.host:
                return 0
            if row.pid != self.pid and _process_alive(row.pid):
                log_event(logger, logging.WARNING, "worker_name_in_use",
                          worker=self.worker_name, pid=row.pid)
                return 0
            released = session.execute(
                update(Job)
                .where(Job.state == JobState.RUNNING, Job.worker_name == self.worker_name,
                       Job.worker_incarnation != self.incarnation)
                .values(lease_expires_at=now)
                .execution_options(synchronize_session=False))
            count = int(getattr(released, "rowcount", 0) or 0)
        if count:
            log_event(logger, logging.WARNING, "previous_incarnation_jobs_released",
                      worker=self.worker_name, jobs=count)
        return count

    def start(self) -> None:
        """Release the jobs of this worker's previous run, beat now, then every period."""
        try:
            self.release_previous_incarnation()
            self.beat()
        except Exception:  # the database may be down: the periodic beat tries again
            logger.exception("heartbeat_first_beat_failed")
        self._periodic.start(run_now=False)
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
        lost_after_seconds=settings.worker.lost_after_seconds,
        health=lambda: getattr(context.drafter, "broken_reason", None),
    )
    context.holder = writer.identity
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
    "WorkerIdentity",
    "device_status",
    "install_celery_heartbeat",
]
