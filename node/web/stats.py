"""Figures for the monitoring page and ``/metrics``, read from the database.

Latencies are measured per study from the database's own timestamps:

* received → drafted: ``studies.first_received_at`` to the first draft's ``created_at``;
* drafted → signed: that draft's ``created_at`` to the ``signed_at`` of the final report
  signed from it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from node.db.models import Export, Job, Report, Study
from node.states import ExportState, JobState, ReportState, StudyState


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles of one latency over a period, in seconds."""

    count: int
    total: float
    p50: float | None
    p90: float | None
    p99: float | None
    values: tuple[float, ...]


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Linear-interpolated percentile of already sorted values (``None`` when empty)."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * fraction
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(sorted_values[low])
    weight = position - low
    return float(sorted_values[low] * (1 - weight) + sorted_values[high] * weight)


def summarise(values: Sequence[float]) -> LatencySummary:
    """Count, sum and p50/p90/p99 of ``values``."""
    ordered = sorted(v for v in values if v >= 0)
    return LatencySummary(len(ordered), float(sum(ordered)), percentile(ordered, 0.5),
                          percentile(ordered, 0.9), percentile(ordered, 0.99), tuple(ordered))


def counts_by_state(session: Session) -> dict[str, dict[str, int]]:
    """Studies, jobs, exports and reports per state (zeros included)."""
    result: dict[str, dict[str, int]] = {}
    for name, model, states in (("studies", Study, StudyState), ("jobs", Job, JobState),
                                ("exports", Export, ExportState),
                                ("reports", Report, ReportState)):
        counts = {state.name: 0 for state in states}
        for state, count in session.execute(
                select(model.state, func.count(model.id)).group_by(model.state)):
            counts[state.name] = int(count)
        result[name] = counts
    return result


def studies_per_hour(session: Session, now: dt.datetime, hours: int = 24) -> list[int]:
    """Studies first received in each of the last ``hours`` hours, oldest hour first."""
    start = now - dt.timedelta(hours=hours)
    buckets = [0] * hours
    for received in session.scalars(
            select(Study.first_received_at).where(Study.first_received_at > start)):
        index = int((received - start).total_seconds() // 3600)
        buckets[min(max(index, 0), hours - 1)] += 1
    return buckets


def draft_latencies(session: Session, since: dt.datetime) -> list[float]:
    """Seconds from first arrival to draft, for drafts made since ``since``."""
    first_draft = (select(Report.study_id, func.min(Report.created_at).label("drafted_at"))
                   .where(Report.state == ReportState.DRAFT)
                   .group_by(Report.study_id).subquery())
    rows = session.execute(
        select(Study.first_received_at, first_draft.c.drafted_at)
        .join(first_draft, first_draft.c.study_id == Study.id)
        .where(first_draft.c.drafted_at >= since))
    return [(drafted - received).total_seconds() for received, drafted in rows]


def signoff_latencies(session: Session, since: dt.datetime) -> list[float]:
    """Seconds from draft to signature, for drafts signed since ``since``."""
    draft = aliased(Report)
    rows = session.execute(
        select(draft.created_at, Report.signed_at)
        .join(draft, draft.id == Report.predecessor_id)
        .where(draft.state == ReportState.DRAFT, Report.signed_at.is_not(None),
               Report.signed_at >= since))
    return [(signed - drafted).total_seconds() for drafted, signed in rows if signed]


@dataclass(frozen=True)
class WorkerStatus:
    """What the database tells about the drafting workers."""

    running: int
    oldest_waiting: dt.datetime | None
    last_finished: dt.datetime | None
    last_failed: dt.datetime | None


def worker_status(session: Session) -> WorkerStatus:
    """Jobs running now, the oldest waiting job and the last finished ones."""
    running = session.scalar(select(func.count(Job.id)).where(
        Job.state == JobState.RUNNING)) or 0
    oldest = session.scalar(select(func.min(Job.enqueued_at)).where(
        Job.state.in_([JobState.QUEUED, JobState.RETRYING])))
    finished = session.scalar(select(func.max(Job.finished_at)).where(
        Job.state == JobState.SUCCEEDED))
    failed = session.scalar(select(func.max(Job.finished_at)).where(
        Job.state == JobState.FAILED))
    return WorkerStatus(int(running), oldest, finished, failed)


__all__ = [
    "LatencySummary",
    "WorkerStatus",
    "counts_by_state",
    "draft_latencies",
    "percentile",
    "signoff_latencies",
    "studies_per_hour",
    "summarise",
    "worker_status",
]
