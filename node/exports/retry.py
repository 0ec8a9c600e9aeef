"""When an export that failed is tried again, and when it is given up."""

from __future__ import annotations

import datetime as dt

from node.config import ExportSettings
from node.db.models import Export
from node.states import ExportState


def backoff_delay(attempts: int, settings: ExportSettings) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt.

    ``base_delay_seconds * backoff_factor ** (attempts - 1)``, capped at
    ``max_delay_seconds``.
    """
    exponent = max(attempts - 1, 0)
    try:
        delay = settings.base_delay_seconds * settings.backoff_factor**exponent
    except OverflowError:
        return settings.max_delay_seconds
    return float(min(delay, settings.max_delay_seconds))


def schedule_retry(export: Export, now: dt.datetime, settings: ExportSettings,
                   message: str, *, commitment: bool = False) -> ExportState:
    """Make ``export`` RETRYING after its back-off, or FAILED when it is given up.

    It is given up once it is older than ``max_age_seconds``, or, for a refused or
    unreported storage commitment (``commitment``), once it has had
    ``commitment_max_attempts`` attempts. Sets ``last_error`` to ``message``.

    Returns
    -------
    ExportState
        The new state.
    """
    deadline = export.created_at + dt.timedelta(seconds=settings.max_age_seconds)
    export.last_error = message
    out_of_attempts = commitment and export.attempts >= settings.commitment_max_attempts
    if now >= deadline or out_of_attempts:
        export.state = ExportState.FAILED
        export.next_attempt_at = None
    else:
        export.state = ExportState.RETRYING
        delay = dt.timedelta(seconds=backoff_delay(export.attempts, settings))
        export.next_attempt_at = min(now + delay, deadline)
    return export.state


__all__ = ["backoff_delay", "schedule_retry"]
