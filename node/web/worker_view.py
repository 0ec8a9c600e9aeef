"""Drafting workers on the monitoring page and in ``/metrics``, from their heartbeat rows.

A worker is *alive* when its last beat is at most ``[worker] stale_after_seconds`` old,
else *stale* (stopped without a clean shutdown, hung, or cut off from the database).
Rows are written by :mod:`workers.heartbeat`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.config import Settings
from node.db.models import WorkerHeartbeat
from node.web.charts import share_bar
from node.web.prometheus import add_family, label_set


@dataclass(frozen=True)
class WorkerRow:
    """One worker process as the monitoring page shows it."""

    name: str
    host: str
    pid: int
    device: str
    gpu_name: str | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    model: str | None
    jobs_in_flight: int
    last_beat_at: dt.datetime
    beat_age_seconds: float
    alive: bool
    broken_reason: str | None = None
    """Why the worker takes no task (its model failed to load), when it says so."""

    @property
    def memory_bar(self) -> Markup | None:
        """The GPU memory bar (used and free), when the worker reports GPU memory."""
        if self.memory_used_bytes is None or not self.memory_total_bytes:
            return None
        used = min(self.memory_used_bytes, self.memory_total_bytes)
        return share_bar([("Used", used, "used"),
                          ("Free", self.memory_total_bytes - used, "free")],
                         title=f"GPU memory of {self.name}", width=240, height=14)


@dataclass(frozen=True)
class WorkerPanel:
    """The workers section of the monitoring page."""

    rows: list[WorkerRow]
    stale_after_seconds: float

    @property
    def alive(self) -> int:
        """Workers with a recent beat."""
        return sum(1 for row in self.rows if row.alive)

    @property
    def stale(self) -> int:
        """Workers whose beat is overdue."""
        return len(self.rows) - self.alive


def worker_panel(session: Session, settings: Settings, now: dt.datetime) -> WorkerPanel:
    """Every worker with a heartbeat row, alive ones first, then by name."""
    stale_after = settings.worker.stale_after_seconds
    rows = []
    for beat in session.scalars(select(WorkerHeartbeat)):
        age = max((now - beat.last_beat_at).total_seconds(), 0.0)
        model = " ".join(p for p in (beat.model_name, beat.model_version) if p) or None
        rows.append(WorkerRow(
            name=beat.worker_name, host=beat.host, pid=beat.pid, device=beat.device,
            gpu_name=beat.gpu_name, memory_used_bytes=beat.gpu_memory_used_bytes,
            memory_total_bytes=beat.gpu_memory_total_bytes, model=model,
            jobs_in_flight=beat.jobs_in_flight, last_beat_at=beat.last_beat_at,
            beat_age_seconds=age, alive=age <= stale_after,
            broken_reason=beat.broken_reason,
        ))
    rows.sort(key=lambda row: (not row.alive, row.name))
    return WorkerPanel(rows, stale_after)


def worker_metric_lines(session: Session, settings: Settings, now: dt.datetime) -> list[str]:
    """Prometheus lines: workers alive and stale, and per alive worker its GPU memory and
    jobs in flight."""
    panel = worker_panel(session, settings, now)
    alive = [row for row in panel.rows if row.alive]
    lines: list[str] = []
    add_family(lines, "radnode_workers_alive", "gauge",
               "Drafting worker processes with a recent heartbeat.", [("", panel.alive)])
    add_family(lines, "radnode_workers_stale", "gauge",
               "Drafting workers whose heartbeat is overdue.", [("", panel.stale)])
    add_family(lines, "radnode_worker_gpu_memory_bytes", "gauge",
               "GPU memory of an alive worker's device (used: by every process on the GPU).",
               [(label_set(worker=row.name, host=row.host, device=row.device, kind=kind), value)
                for row in alive
                for kind, value in (("used", row.memory_used_bytes),
                                    ("total", row.memory_total_bytes))
                if value is not None])
    add_family(lines, "radnode_worker_jobs_in_flight", "gauge",
               "Drafting jobs an alive worker is running.",
               [(label_set(worker=row.name, host=row.host), row.jobs_in_flight)
                for row in alive])
    return lines


__all__ = ["WorkerPanel", "WorkerRow", "worker_metric_lines", "worker_panel"]
