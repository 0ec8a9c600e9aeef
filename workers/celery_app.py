"""The Celery application: settings for GPU work on a Redis broker.

* late acknowledgement and redelivery on worker loss (the database caps attempts);
* prefetch of one per slot, so a worker holds only what it can batch;
* a Redis visibility timeout above the longest wait plus run time;
* soft shutdown that lets running drafts finish, then hands the rest back.
"""

from __future__ import annotations

import logging

from celery import Celery

from node.config import BrokerSettings, load_settings
from node.jobs.queue import DRAFT_TASK_NAME, create_celery_client
from node.logs import log_event

logger = logging.getLogger(__name__)


def create_celery_app(broker: BrokerSettings, *, include_tasks: bool = True) -> Celery:
    """Build the Celery app for ``broker``.

    Parameters
    ----------
    broker
        Broker URL (``redis://…``), queue names and visibility timeout.
    include_tasks
        Register the task functions (workers); the node only sends by name.

    Returns
    -------
    Celery
        The configured application: the node's client settings
        (:func:`node.jobs.queue.create_celery_client`) and the worker's.
    """
    app = create_celery_client(broker)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=60.0,
        worker_enable_soft_shutdown_on_idle=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    if include_tasks:
        from workers.heartbeat import install_celery_heartbeat

        app.conf.include = ["workers.tasks"]
        install_celery_heartbeat()
    return app


def hand_back_and_stop_consuming(app: Celery, job_id: int, hostname: str | None) -> None:
    """A broken worker (its model cannot load) gives job ``job_id`` back to the queue and
    stops taking tasks from it; it stays up, marked broken in its heartbeat.

    Parameters
    ----------
    app
        The worker's Celery application.
    job_id
        The job just handed back (QUEUED again in the database).
    hostname
        This worker's Celery node name (the control message's destination).
    """
    queue = load_settings().broker.draft_queue
    app.send_task(DRAFT_TASK_NAME, args=[job_id], queue=queue)
    if hostname:
        app.control.cancel_consumer(queue, destination=[hostname])
    log_event(logger, logging.ERROR, "worker_broken_stopped_consuming", job_id=job_id,
              queue=queue)
