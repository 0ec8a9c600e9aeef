"""What an administrator watches: broker, destinations, waiting work and the alerts.

* **Broker** — whether Redis answers and how many draft tasks wait in its queue, asked
  with a short timeout and at most every ``[broker] health_cache_seconds`` (a page or a
  scrape never waits longer than ``health_timeout_seconds`` for it, and never queues
  behind another page's check);
* **Destinations** — per configured AE title: the last delivery, the last failure and the
  failures since the last delivery (rows written with each export's outcome), and the
  undelivered exports with the oldest one's age;
* **Alerts** — ``job_wait`` (oldest queued or retrying drafting job older than
  ``[alerts] job_wait_seconds``), ``export_wait`` (oldest undelivered export older than
  ``export_wait_seconds``) and ``broker_unreachable``. A change is logged once
  (``alert_firing`` at WARNING, ``alert_resolved`` at INFO); ``radnode serve`` evaluates
  them every ``check_seconds``, and each page and scrape does too.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from node.config import BrokerSettings, Settings, masked_url
from node.db.models import DestinationHealth, Export, Job
from node.db.types import utcnow
from node.logs import log_event
from node.periodic import PeriodicThread
from node.states import UNDELIVERED_EXPORT_STATES, JobState

logger = logging.getLogger(__name__)

#: Kombu's Redis transport keeps a queue's higher priorities in lists named
#: ``<queue>\x06\x16<priority>``; the queue's length is the sum.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


@dataclass(frozen=True)
class BrokerHealth:
    """The broker as last asked."""

    url: str
    """Masked URL; empty for the embedded queue."""
    reachable: bool | None
    """``None`` for the embedded queue (nothing to reach) or before the first answer."""
    queue_length: int | None
    error: str | None
    checked_at: dt.datetime | None

    @property
    def embedded(self) -> bool:
        """Whether jobs run in the node's own process (no broker)."""
        return not self.url


class BrokerProbe:
    """Asks Redis for a PING and the draft queue's length, caching the answer.

    Parameters
    ----------
    settings
        The ``[broker]`` section: URL, queue name, timeout and cache period.
    clock
        Monotonic seconds (tests may pass their own).
    """

    def __init__(self, settings: BrokerSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._last: BrokerHealth | None = None
        self._last_at = float("-inf")
        self._client: Any = None

    def health(self) -> BrokerHealth:
        """The cached answer when fresh or while another caller asks, else a new one."""
        if not self.settings.url:
            return BrokerHealth("", None, None, None, None)
        if not self._lock.acquire(blocking=False):
            return self._last or BrokerHealth(masked_url(self.settings.url), None, None,
                                              "being checked", None)
        try:
            if self._last is None or (
                    self._clock() - self._last_at >= self.settings.health_cache_seconds):
                self._last = self._ask()
                self._last_at = self._clock()
            return self._last
        finally:
            self._lock.release()

    def _ask(self) -> BrokerHealth:
        import redis

        url = masked_url(self.settings.url)
        timeout = self.settings.health_timeout_seconds
        try:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.settings.url, socket_connect_timeout=timeout, socket_timeout=timeout)
            queue = self.settings.draft_queue
            names = [queue, *(f"{queue}{_PRIORITY_SEPARATOR}{p}" for p in _PRIORITY_STEPS)]
            pipe = self._client.pipeline(transaction=False)
            for name in names:
                pipe.llen(name)
            length = sum(int(n) for n in pipe.execute())
        except (redis.RedisError, OSError, ValueError) as exc:
            if self._client is not None:
                self._client.connection_pool.disconnect()
            return BrokerHealth(url, False, None, type(exc).__name__ + ": " +
                                str(exc).splitlines()[0][:200], utcnow())
        return BrokerHealth(url, True, length, None, utcnow())

    def close(self) -> None:
        """Drop the connection."""
        if self._client is not None:
            self._client.close()
            self._client = None


@dataclass(frozen=True)
class DestinationRow:
    """One destination as the monitoring page shows it."""

    ae_title: str
    address: str | None
    """``host:port`` of a configured destination; ``None`` for one no longer configured."""
    last_success_at: dt.datetime | None
    last_failure_at: dt.datetime | None
    last_error: str | None
    consecutive_failures: int
    waiting: int
    oldest_waiting_at: dt.datetime | None
    oldest_waiting_seconds: float | None

    @property
    def status(self) -> str:
        """``failing`` after a failure with no delivery since, ``ok`` after a delivery,
        ``unknown`` before any attempt."""
        if self.consecutive_failures:
            return "failing"
        return "ok" if self.last_success_at is not None else "unknown"


def destination_rows(session: Session, settings: Settings, now: dt.datetime
                     ) -> list[DestinationRow]:
    """Every configured destination, then any other AE with a health row or waiting
    exports, by AE title."""
    health = {row.destination_ae: row for row in session.scalars(select(DestinationHealth))}
    waiting: dict[str, tuple[int, dt.datetime | None]] = {
        ae: (int(count), oldest) for ae, count, oldest in session.execute(
            select(Export.destination_ae, func.count(Export.id), func.min(Export.created_at))
            .where(Export.state.in_(UNDELIVERED_EXPORT_STATES))
            .group_by(Export.destination_ae))}
    addresses = {d.ae_title: f"{d.host}:{d.port}" for d in settings.destinations}
    titles = list(dict.fromkeys([*addresses, *sorted({*health, *waiting} - set(addresses))]))
    rows = []
    for title in titles:
        row = health.get(title)
        count, oldest = waiting.get(title, (0, None))
        rows.append(DestinationRow(
            ae_title=title, address=addresses.get(title),
            last_success_at=row.last_success_at if row else None,
            last_failure_at=row.last_failure_at if row else None,
            last_error=row.last_error if row else None,
            consecutive_failures=row.consecutive_failures if row else 0,
            waiting=count, oldest_waiting_at=oldest,
            oldest_waiting_seconds=_age(now, oldest)))
    return rows


def _age(now: dt.datetime, since: dt.datetime | None) -> float | None:
    return None if since is None else max((now - since).total_seconds(), 0.0)


@dataclass(frozen=True)
class Alert:
    """One alert's state now."""

    name: str
    firing: bool
    value: float | None
    """Seconds waited (``None`` when nothing waits); for the broker, ``None``."""
    threshold: float | None
    summary: str


@dataclass(frozen=True)
class OperationsSnapshot:
    """Broker, destinations, waiting work and alerts at one moment."""

    broker: BrokerHealth
    queued_jobs: int
    """Jobs QUEUED in the database (compare with the broker's queue length)."""
    oldest_job_waiting_seconds: float | None
    oldest_export_waiting_seconds: float | None
    destinations: list[DestinationRow]
    alerts: list[Alert]

    @property
    def firing(self) -> list[Alert]:
        """The alerts that fire now."""
        return [alert for alert in self.alerts if alert.firing]


class OperationsMonitor:
    """Builds :class:`OperationsSnapshot` and logs each alert's changes once.

    One per process: the web app and the periodic check share it.
    """

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.broker = BrokerProbe(settings.broker)
        self._firing: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._thread = PeriodicThread("alerts", settings.alerts.check_seconds, self._check)

    def snapshot(self, now: dt.datetime | None = None) -> OperationsSnapshot:
        """Read the database and the broker, evaluate the alerts and log their changes."""
        now = now or utcnow()
        with self.sessions() as session:
            queued = session.scalar(select(func.count(Job.id)).where(
                Job.state == JobState.QUEUED)) or 0
            oldest_job = session.scalar(select(func.min(Job.enqueued_at)).where(
                Job.state.in_([JobState.QUEUED, JobState.RETRYING])))
            destinations = destination_rows(session, self.settings, now)
        broker = self.broker.health()
        oldest_exports = [d.oldest_waiting_seconds for d in destinations
                          if d.oldest_waiting_seconds is not None]
        job_age = _age(now, oldest_job)
        export_age = max(oldest_exports) if oldest_exports else None
        limits = self.settings.alerts
        alerts = [
            Alert("job_wait", job_age is not None and job_age > limits.job_wait_seconds,
                  job_age, limits.job_wait_seconds,
                  "the oldest waiting drafting job has waited too long"),
            Alert("export_wait",
                  export_age is not None and export_age > limits.export_wait_seconds,
                  export_age, limits.export_wait_seconds,
                  "the oldest undelivered export has waited too long"),
            Alert("broker_unreachable", broker.reachable is False, None, None,
                  "the broker does not answer"),
        ]
        self._log_changes(alerts)
        return OperationsSnapshot(broker, int(queued), job_age, export_age, destinations,
                                  alerts)

    def _log_changes(self, alerts: list[Alert]) -> None:
        with self._lock:
            changed = [a for a in alerts if self._firing.get(a.name, False) != a.firing]
            for alert in alerts:
                self._firing[alert.name] = alert.firing
        for alert in changed:
            log_event(logger, logging.WARNING if alert.firing else logging.INFO,
                      "alert_firing" if alert.firing else "alert_resolved",
                      alert=alert.name, value_seconds=alert.value,
                      threshold_seconds=alert.threshold, summary=alert.summary)

    def _check(self) -> None:
        try:
            self.snapshot()
        except Exception as exc:  # noqa: BLE001 - a failed check must not stop the next
            log_event(logger, logging.WARNING, "alert_check_failed", error=type(exc).__name__)

    def start(self) -> None:
        """Evaluate the alerts every ``[alerts] check_seconds`` in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the periodic check and drop the broker connection."""
        self._thread.stop()
        self.broker.close()


__all__ = [
    "Alert",
    "BrokerHealth",
    "BrokerProbe",
    "DestinationRow",
    "OperationsMonitor",
    "OperationsSnapshot",
    "destination_rows",
]
