"""Celery tasks: thin wrappers that take primary keys and call plain functions."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from workers.context import process_job_context
from workers.jobs import run_draft_job


@shared_task(name="radnode.draft", bind=True, acks_late=True, max_retries=None)  # type: ignore[untyped-decorator]
def draft(self: Any, job_id: int) -> None:
    """Draft the report for job ``job_id`` (idempotent under redelivery)."""
    retry_in = run_draft_job(process_job_context(), job_id)
    if retry_in is not None:
        raise self.retry(countdown=retry_in)
