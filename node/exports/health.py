"""The latest outcome of sending to each destination, for monitoring."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from node.db.models import DestinationHealth


def note_destination_outcome(session: Session, destination_ae: str, now: dt.datetime,
                             error: str | None = None) -> None:
    """Record one send to ``destination_ae`` in its health row (created on first use).

    A success sets ``last_success_at`` and clears the run of failures; a failure (``error``
    given) sets ``last_failure_at`` and ``last_error`` and counts one more consecutive
    failure. Runs in the caller's transaction.
    """
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    table = DestinationHealth.__table__
    if error is None:
        values: dict[str, object] = {"last_success_at": now, "consecutive_failures": 0}
        update: dict[str, object] = dict(values)
    else:
        values = {"last_failure_at": now, "last_error": error, "consecutive_failures": 1}
        update = {"last_failure_at": now, "last_error": error,
                  "consecutive_failures": table.c.consecutive_failures + 1}
    statement = module.insert(table).values(destination_ae=destination_ae, **values)
    session.execute(statement.on_conflict_do_update(
        index_elements=[table.c.destination_ae], set_=update))


__all__ = ["note_destination_outcome"]
