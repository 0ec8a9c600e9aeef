"""Monitoring: the admin page, Prometheus metrics and the health probes.

* ``GET /admin/monitoring`` — queue depths, studies per hour (last 24 h), latency
  percentiles, disk use, worker status, worker heartbeats (alive or stale, device, GPU
  memory) and live draft agreement per CheXpert observation,
  with server-drawn SVG charts;
* ``GET /metrics`` — Prometheus text exposition (``radnode_*``; no patient data, no login);
* ``GET /healthz`` — the process answers;
* ``GET /readyz`` — the database answers and storage accepts new data (503 otherwise);
  the storage volume's free and total bytes and the watermarks are in ``storage``.
"""

from __future__ import annotations

import datetime as dt
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import text

from node.db.types import utcnow
from node.states import StudyState
from node.web.charts import bar_chart, latency_histogram, share_bar
from node.web.deps import AdminDep, get_context, render
from node.web.prometheus import add_family
from node.web.quality_view import agreement_metric_lines, agreement_panel
from node.web.stats import (
    LatencySummary,
    counts_by_state,
    draft_latencies,
    signoff_latencies,
    studies_per_hour,
    summarise,
    worker_status,
)
from node.web.worker_view import worker_metric_lines, worker_panel

logger = logging.getLogger(__name__)
router = APIRouter()

#: Window of the latency summaries on the page and in ``/metrics``.
LATENCY_WINDOW = dt.timedelta(hours=24)
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@router.get("/admin/monitoring")
def monitoring(request: Request, viewer: AdminDep) -> Response:
    """The monitoring page."""
    ctx = get_context(request)
    now = utcnow()
    since = now - LATENCY_WINDOW
    with ctx.database.sessions() as session:
        counts = counts_by_state(session)
        hourly = studies_per_hour(session, now)
        drafted = summarise(draft_latencies(session, since))
        signed = summarise(signoff_latencies(session, since))
        workers = worker_status(session)
        agreement = agreement_panel(session, ctx.settings, now)
        heartbeats = worker_panel(session, ctx.settings, now)
    capacity = ctx.store.capacity()
    start = now - dt.timedelta(hours=len(hourly))
    hour_labels = [(start + dt.timedelta(hours=i + 1)).astimezone().strftime("%H:00")
                   for i in range(len(hourly))]
    studies = counts["studies"]
    return render(request, "monitoring.html", {
        "nav": "monitoring", "counts": counts, "capacity": capacity, "workers": workers,
        "drafted": drafted, "signed": signed, "hourly_total": sum(hourly),
        "window_hours": int(LATENCY_WINDOW.total_seconds() // 3600),
        "queue": "Celery over Redis" if ctx.settings.broker.url else "in-process",
        "agreement": agreement,
        "heartbeats": heartbeats,
        "hourly_chart": bar_chart(hourly, hour_labels, title="Studies received per hour",
                                  label_every=2, width=1240, height=220),
        "draft_chart": latency_histogram(drafted.values, title="Received to drafted"),
        "signoff_chart": latency_histogram(signed.values, title="Drafted to signed"),
        "state_bar": share_bar(
            [(s.name.title(), studies[s.name], f"st-{s.name.lower()}") for s in StudyState],
            title="Studies by state"),
        "disk_bar": share_bar(
            [("Used", capacity.total_bytes - capacity.free_bytes, "used"),
             ("Free", capacity.free_bytes, "free")], title="Storage use"),
    })


def _summary(lines: list[str], name: str, help_text: str, summary: LatencySummary) -> None:
    samples: list[tuple[str, float]] = []
    for quantile, value in (("0.5", summary.p50), ("0.9", summary.p90),
                            ("0.99", summary.p99)):
        samples.append((f'{{quantile="{quantile}"}}', float("nan") if value is None
                        else float(value)))
    add_family(lines, name, "summary", help_text, samples)
    lines.append(f"{name}_sum {summary.total:.6g}")
    lines.append(f"{name}_count {summary.count}")


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    ctx = get_context(request)
    now = utcnow()
    since = now - LATENCY_WINDOW
    with ctx.database.sessions() as session:
        counts = counts_by_state(session)
        drafted = summarise(draft_latencies(session, since))
        signed = summarise(signoff_latencies(session, since))
        workers = worker_status(session)
        agreement_lines = agreement_metric_lines(session, ctx.settings, now)
        worker_lines = worker_metric_lines(session, ctx.settings, now)
    capacity = ctx.store.capacity()
    lines: list[str] = []
    for name, what in (("studies", "Studies"), ("jobs", "Drafting jobs"),
                       ("exports", "Report exports"), ("reports", "Report versions")):
        add_family(lines, f"radnode_{name}", "gauge", f"{what} by state.",
                [(f'{{state="{state}"}}', count) for state, count in counts[name].items()])
    add_family(lines, "radnode_jobs_running", "gauge", "Drafting jobs running now.",
            [("", workers.running)])
    oldest = ((now - workers.oldest_waiting).total_seconds()
              if workers.oldest_waiting is not None else 0.0)
    add_family(lines, "radnode_job_oldest_waiting_seconds", "gauge",
            "Age of the oldest queued or retrying drafting job.", [("", float(max(oldest, 0)))])
    add_family(lines, "radnode_storage_free_bytes", "gauge", "Free bytes on the storage volume.",
            [("", capacity.free_bytes)])
    add_family(lines, "radnode_storage_total_bytes", "gauge", "Size of the storage volume.",
            [("", capacity.total_bytes)])
    add_family(lines, "radnode_storage_accepting", "gauge",
            "1 when storage is under its watermarks and accepts new instances.",
            [("", int(capacity.accepting))])
    _summary(lines, "radnode_draft_latency_seconds",
             "Seconds from first instance received to draft, drafts of the last 24 h.", drafted)
    _summary(lines, "radnode_signoff_latency_seconds",
             "Seconds from draft to signature, reports signed in the last 24 h.", signed)
    lines.extend(agreement_lines)
    lines.extend(worker_lines)
    return PlainTextResponse("\n".join(lines) + "\n", media_type=PROMETHEUS_CONTENT_TYPE)


@router.get("/healthz")
def healthz() -> Response:
    """The process is up."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
def readyz(request: Request) -> Response:
    """Ready when the database answers and storage accepts new data."""
    ctx = get_context(request)
    checks: dict[str, str] = {}
    try:
        with ctx.database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means not ready
        checks["database"] = f"unavailable: {type(exc).__name__}"
    storage: dict[str, object] = {}
    try:
        capacity = ctx.store.capacity()
        checks["storage"] = "ok" if capacity.accepting else "full"
        storage = {"free_bytes": capacity.free_bytes, "total_bytes": capacity.total_bytes,
                   "used_percent": round(capacity.used_percent, 1),
                   "min_free_bytes": ctx.store.min_free_bytes,
                   "max_used_percent": ctx.store.max_used_percent}
    except OSError as exc:
        checks["storage"] = f"unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    if not ready:
        logger.warning("not_ready", extra={"checks": checks})
    body: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
    if storage:
        body["storage"] = storage
    return JSONResponse(body, status_code=200 if ready else 503)
