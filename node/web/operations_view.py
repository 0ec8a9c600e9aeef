"""Broker, destinations and alerts in ``/metrics`` (see :mod:`node.operations`)."""

from __future__ import annotations

import datetime as dt

from node.operations import OperationsSnapshot
from node.web.prometheus import add_family, label_set


def _timestamp(value: dt.datetime | None) -> int | None:
    """Whole Unix seconds: written in full, where a float would keep six digits."""
    return None if value is None else int(value.timestamp())


def operations_metric_lines(snapshot: OperationsSnapshot) -> list[str]:
    """Prometheus lines: broker reachability and queue length, jobs queued in the
    database, per destination its health and waiting exports, and one gauge per alert."""
    broker = snapshot.broker
    lines: list[str] = []
    if not broker.embedded:
        add_family(lines, "radnode_broker_up", "gauge",
                   "1 when the broker answered its last check, 0 when it did not.",
                   [("", int(bool(broker.reachable)))])
        add_family(lines, "radnode_broker_queue_length", "gauge",
                   "Draft tasks waiting in the broker's queue (NaN when unreachable).",
                   [("", broker.queue_length)])
    add_family(lines, "radnode_jobs_queued_in_database", "gauge",
               "Drafting jobs QUEUED in the database (compare with the broker's queue).",
               [("", snapshot.queued_jobs)])
    rows = snapshot.destinations
    add_family(lines, "radnode_destination_consecutive_failures", "gauge",
               "Failed sends to a destination since its last delivery.",
               [(label_set(destination=d.ae_title), d.consecutive_failures) for d in rows])
    add_family(lines, "radnode_destination_last_success_timestamp_seconds", "gauge",
               "Unix time of the last delivery to a destination (NaN: none yet).",
               [(label_set(destination=d.ae_title), _timestamp(d.last_success_at))
                for d in rows])
    add_family(lines, "radnode_destination_last_failure_timestamp_seconds", "gauge",
               "Unix time of the last failed send to a destination (NaN: none yet).",
               [(label_set(destination=d.ae_title), _timestamp(d.last_failure_at))
                for d in rows])
    add_family(lines, "radnode_destination_exports_waiting", "gauge",
               "Undelivered exports (pending or retrying) of a destination.",
               [(label_set(destination=d.ae_title), d.waiting) for d in rows])
    add_family(lines, "radnode_destination_oldest_waiting_export_seconds", "gauge",
               "Age of a destination's oldest undelivered export (0: none waiting).",
               [(label_set(destination=d.ae_title), d.oldest_waiting_seconds or 0.0)
                for d in rows])
    add_family(lines, "radnode_export_oldest_waiting_seconds", "gauge",
               "Age of the oldest undelivered export, any destination (0: none waiting).",
               [("", snapshot.oldest_export_waiting_seconds or 0.0)])
    add_family(lines, "radnode_alert", "gauge",
               "1 while an alert fires: job_wait, export_wait, broker_unreachable.",
               [(label_set(name=a.name), int(a.firing)) for a in snapshot.alerts])
    return lines


__all__ = ["operations_metric_lines"]
