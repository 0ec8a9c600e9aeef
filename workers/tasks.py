"""Celery tasks: thin wrappers that take primary keys and call plain functions."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from workers.celery_app import hand_back_and_stop_consuming
from workers.context import process_job_context
from workers.errors import ModelUnavailableError
from workers.jobs import run_draft_job


@shared_task(name="radnode.draft", bind=True, acks_late=True, max_retries=None)  # type: ignore[untyped-decorator]
def draft(self: Any, job_id: int) -> None:
    """Draft the report for job ``job_id`` (idempotent under redelivery)."""
    try:
        retry_in = run_draft_job(process_job_context(), job_id)
    except ModelUnavailableError:  # this worker is broken: the job goes to the others
        hand_back_and_stop_consuming(self.app, job_id, self.request.hostname)
        return
    if retry_in is not None:
        raise self.retry(countdown=retry_in)
