"""Processes and probes for the job recovery scenarios (workers, an embedded node)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from node.config import Settings
from node.db.models import Job, Report, Study, WorkerHeartbeat
from node.states import JobState, StudyState
from tests.conftest import REPO_ROOT, free_port
from tests.integration.dicom_net import wait_for

HEARTBEAT_SECONDS = 0.5


class DraftingWorker:
    """A ``radnode worker --name NAME`` subprocess with the node's settings."""

    def __init__(self, settings: Settings, name: str, log_path: Path,
                 *, bundle: Path | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "RADNODE_DATABASE__URL": settings.database.url,
            "RADNODE_BROKER__URL": settings.broker.url,
            "RADNODE_STORAGE__ROOT": str(settings.storage.root),
            "RADNODE_MODEL__BUNDLE": str(bundle or settings.model.bundle),
            "RADNODE_WORKER__DEVICE": "cpu",
            "RADNODE_WORKER__HEARTBEAT_SECONDS": str(settings.worker.heartbeat_seconds),
            "RADNODE_WORKER__LOST_AFTER_SECONDS": str(settings.worker.lost_after_seconds),
            "RADNODE_LOGGING__FORMAT": "text",
            "RADNODE_JOBS__MAX_ATTEMPTS": str(settings.jobs.max_attempts),
            "RADNODE_JOBS__LEASE_SECONDS": str(settings.jobs.lease_seconds),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def celery_name(self) -> str:
        """The prefix of the heartbeat name (``radnode-draft-NAME@host``)."""
        return f"radnode-draft-{self.name}@"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "node.cli.main", "worker", "--concurrency", "1",
                 "--name", self.name],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None and self.process.poll() is None
        os.kill(self.process.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Probe:
    """Read-only views of the node's database from the test."""

    def __init__(self, database_url: str) -> None:
        self.engine = create_engine(database_url)

    def session(self) -> Session:
        return Session(self.engine)

    def beat_incarnation(self, name_prefix: str) -> str | None:
        """The incarnation of the worker whose heartbeat name starts with ``name_prefix``."""
        with self.session() as session:
            return session.scalar(select(WorkerHeartbeat.incarnation).where(
                WorkerHeartbeat.worker_name.startswith(name_prefix)))

    def wait_ready(self, worker: DraftingWorker, *, previous: str | None = None,
                   timeout: float = 180) -> float:
        """Wait until ``worker`` beats (a new incarnation); return the monotonic time."""
        def ready() -> bool:
            assert worker.process is not None
            assert worker.process.poll() is None, worker.log()[-3000:]
            incarnation = self.beat_incarnation(worker.celery_name)
            return incarnation is not None and incarnation != previous

        wait_for(ready, timeout=timeout, what=f"worker {worker.name} ready")
        return time.monotonic()

    def running_job(self) -> Job | None:
        with self.session() as session:
            return session.scalars(select(Job).where(Job.state == JobState.RUNNING)).first()

    def job(self, job_id: int) -> Job:
        with self.session() as session:
            return session.get_one(Job, job_id)

    def all_drafted(self, count: int) -> bool:
        with self.session() as session:
            states = list(session.scalars(select(Study.state)))
        return len(states) == count and all(s == StudyState.DRAFTED for s in states)

    def reports_per_job(self) -> list[int]:
        with self.session() as session:
            return sorted(session.scalars(
                select(func.count()).select_from(Report).group_by(Report.job_id)))

    def close(self) -> None:
        self.engine.dispose()


class EmbeddedNode:
    """``radnode serve`` with no broker (drafting in-process), as a subprocess."""

    def __init__(self, folder: Path, database_url: str, bundle: Path) -> None:
        self.dicom_port = free_port()
        self.log_path = folder / "serve.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "RADNODE_DATABASE__URL": database_url,
            "RADNODE_BROKER__URL": "",
            "RADNODE_STORAGE__ROOT": str(folder / "storage"),
            "RADNODE_STORAGE__MIN_FREE_MB": "1",
            "RADNODE_MODEL__BUNDLE": str(bundle),
            "RADNODE_DICOM__PORT": str(self.dicom_port),
            "RADNODE_DICOM__BIND_ADDRESS": "127.0.0.1",
            "RADNODE_WEB__PORT": str(free_port()),
            "RADNODE_ASSEMBLY__QUIET_SECONDS": "0.5",
            "RADNODE_WORKER__DEVICE": "cpu",
            "RADNODE_WORKER__HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
            "RADNODE_WORKER__LOST_AFTER_SECONDS": "300",
            "RADNODE_JOBS__RECONCILE_SECONDS": "0.5",
            "RADNODE_LOGGING__FORMAT": "text",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "node.cli.main", "serve"], env=self.env,
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)

    def wait_listening(self, timeout: float = 120) -> float:
        """Wait until the DICOM port accepts connections; return the monotonic time."""
        import socket

        def listening() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, self.log()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(listening, timeout=timeout, what="the node's DICOM port")
        return time.monotonic()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
