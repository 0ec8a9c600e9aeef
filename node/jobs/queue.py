"""Putting job ids on a queue: Celery over Redis, or an in-process worker thread."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from celery import Celery

from node.config import BrokerSettings
from node.logs import log_event

logger = logging.getLogger(__name__)

DRAFT_TASK_NAME = "radnode.draft"
BROKER_CHECK_TIMEOUT_SECONDS = 2.0


def create_celery_client(broker: BrokerSettings) -> Celery:
    """Build a Celery client that sends tasks by name to ``broker``.

    The worker's application (``workers.celery_app``) starts from this one and adds
    what only a consuming worker needs; the node uses it as it is.

    Parameters
    ----------
    broker
        Broker URL (``redis://…``), queue names and visibility timeout.

    Returns
    -------
    Celery
        A client with no tasks registered.
    """
    app = Celery("radnode", broker=broker.url or "memory://", set_as_current=False)
    transport_options = {"visibility_timeout": broker.visibility_timeout_seconds}
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        broker_transport_options=transport_options,
        result_backend_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_default_queue=broker.draft_queue,
        task_routes={DRAFT_TASK_NAME: {"queue": broker.draft_queue}},
        task_serializer="json",
        accept_content=["json"],
    )
    return app


class Startable(Protocol):
    """A background activity with a start and a stop (the worker heartbeat)."""

    def start(self) -> None:
        """Start it."""
        ...

    def stop(self) -> None:
        """Stop it."""
        ...


class WorkQueue(Protocol):
    """Where the node sends drafting work. Only job ids travel."""

    def enqueue_draft(self, job_id: int, *, delay_seconds: float = 0.0) -> str | None:
        """Queue drafting of ``job_id``; return a task id when the queue has one."""
        ...

    def broker_identity(self) -> str | None:
        """The identity of the broker's current run (it changes when a broker restarts
        and forgets its messages); ``None`` for a queue without a broker.

        Raises
        ------
        Exception
            When the broker cannot be reached.
        """
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


class CeleryWorkQueue:
    """Send tasks by name to the Redis broker (the node never imports the model code).

    Parameters
    ----------
    broker
        Broker URL, queue names and visibility timeout.
    """

    def __init__(self, broker: BrokerSettings) -> None:
        self.broker = broker
        self.app = create_celery_client(broker)

    def enqueue_draft(self, job_id: int, *, delay_seconds: float = 0.0) -> str | None:
        result = self.app.send_task(
            DRAFT_TASK_NAME,
            args=[job_id],
            queue=self.broker.draft_queue,
            countdown=delay_seconds or None,
        )
        return str(result.id)

    def broker_identity(self) -> str | None:
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                         timeout=BROKER_CHECK_TIMEOUT_SECONDS)
            client = connection.default_channel.client
            info = client.info("server")
        return str(info.get("run_id") or "")

    def close(self) -> None:
        self.app.close()


class EmbeddedWorkQueue:
    """Run drafting in a thread of this process (no broker needed).

    Nothing is durable here: the database is, and the reconciler re-enqueues
    whatever a restart dropped.

    Parameters
    ----------
    run_job
        The job runner, the same one the Celery task calls. It returns the delay
        after which to try again, or ``None`` when done.
    heartbeat
        Started with the queue and stopped by :meth:`close`: the worker heartbeat of
        this process (``workers.heartbeat.HeartbeatWriter``).
    warm_up
        Run first in the worker thread (loading the model), so the first job after a
        start does not wait for it.
    """

    def __init__(self, run_job: Callable[[int], float | None],
                 heartbeat: Startable | None = None,
                 warm_up: Callable[[], None] | None = None) -> None:
        self._run_job = run_job
        self._heartbeat = heartbeat
        self._warm_up = warm_up
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._timers: set[threading.Timer] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="embedded-worker", daemon=True)
        self._thread.start()
        if heartbeat is not None:
            heartbeat.start()

    def enqueue_draft(self, job_id: int, *, delay_seconds: float = 0.0) -> str | None:
        if delay_seconds > 0:
            timer = threading.Timer(delay_seconds, self._queue.put, args=(job_id,))
            timer.daemon = True
            with self._lock:
                self._timers.add(timer)
            timer.start()
        else:
            self._queue.put(job_id)
        return None

    def broker_identity(self) -> str | None:
        return None

    def _loop(self) -> None:
        if self._warm_up is not None:
            try:
                self._warm_up()
            except Exception:  # the first job tries again and records the failure
                logger.exception("embedded_warm_up_failed")
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                retry_in = self._run_job(job_id)
            except Exception:
                logger.exception("embedded_job_crashed", extra={"job_id": job_id})
                continue
            if retry_in is not None:
                log_event(logger, logging.INFO, "job_retry_scheduled", job_id=job_id,
                          delay_seconds=retry_in)
                self.enqueue_draft(job_id, delay_seconds=retry_in)

    def close(self) -> None:
        with self._lock:
            for timer in self._timers:
                timer.cancel()
        self._queue.put(None)
        self._thread.join(timeout=30)
        if self._heartbeat is not None:
            self._heartbeat.stop()
