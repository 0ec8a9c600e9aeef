"""Export of the audit trail as CSV or JSON Lines, for the command line and the web app.

Events are read in id order, in pages, so an export of years of events runs in constant
memory. Times are written in ISO 8601 UTC. In CSV, a value that a spreadsheet would take
for a formula is prefixed with an apostrophe; ``details`` is written as compact JSON.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import AuditEvent

#: Columns of an exported event, in order.
AUDIT_COLUMNS = ("id", "at", "actor", "user_id", "action", "object_type", "object_id",
                 "study_id", "details")
_PAGE = 1000
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class AuditFormat(enum.Enum):
    """File formats of an audit export."""

    CSV = "csv"
    JSONL = "jsonl"

    @property
    def media_type(self) -> str:
        """The HTTP media type of the format."""
        return "text/csv" if self is AuditFormat.CSV else "application/jsonl"


class AuditExportError(ValueError):
    """An export was asked for with a bad time range or format."""


def parse_time_bound(text: str, *, name: str) -> dt.datetime:
    """Read a time bound: an ISO 8601 date or date-time; without an offset it is UTC.

    Parameters
    ----------
    text
        E.g. ``2026-11-01`` or ``2026-11-01T08:00:00+01:00``.
    name
        The option's name, for the error message.

    Raises
    ------
    AuditExportError
        When ``text`` is not an ISO 8601 date or date-time.
    """
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise AuditExportError(
            f"{name} must be an ISO 8601 date or date-time such as 2026-11-01 or "
            f"2026-11-01T08:00:00Z, not {text!r}") from exc
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def check_range(since: dt.datetime | None, until: dt.datetime | None) -> None:
    """Refuse a range whose end is not after its start.

    Raises
    ------
    AuditExportError
        When both bounds are given and ``until`` is not later than ``since``.
    """
    if since is not None and until is not None and until <= since:
        raise AuditExportError("--until must be later than --since")


def event_record(event: AuditEvent) -> dict[str, Any]:
    """One event as a plain dictionary with the :data:`AUDIT_COLUMNS` keys."""
    return {
        "id": event.id,
        "at": event.at.astimezone(dt.UTC).isoformat(),
        "actor": event.actor,
        "user_id": event.user_id,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "study_id": event.study_id,
        "details": event.details,
    }


def iter_events(sessions: sessionmaker[Session], since: dt.datetime | None,
                until: dt.datetime | None) -> Iterator[dict[str, Any]]:
    """Yield the events with ``since <= at < until`` in id order, a page at a time.

    Parameters
    ----------
    sessions
        The node's database sessions (a short read per page).
    since, until
        Inclusive start and exclusive end; ``None`` leaves that side open.
    """
    check_range(since, until)
    last_id = 0
    while True:
        query = select(AuditEvent).where(AuditEvent.id > last_id)
        if since is not None:
            query = query.where(AuditEvent.at >= since)
        if until is not None:
            query = query.where(AuditEvent.at < until)
        with sessions() as session:
            page = [event_record(e) for e in
                    session.scalars(query.order_by(AuditEvent.id).limit(_PAGE))]
        yield from page
        if len(page) < _PAGE:
            return
        last_id = page[-1]["id"]


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def render_lines(records: Iterator[dict[str, Any]], fmt: AuditFormat) -> Iterator[str]:
    """Yield the export as text chunks: a CSV header and rows, or one JSON object a line."""
    if fmt is AuditFormat.JSONL:
        for record in records:
            yield json.dumps(record, sort_keys=False, separators=(",", ":")) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(AUDIT_COLUMNS)
    for record in records:
        writer.writerow([_csv_cell(record[column]) for column in AUDIT_COLUMNS])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


__all__ = [
    "AUDIT_COLUMNS",
    "AuditExportError",
    "AuditFormat",
    "check_range",
    "event_record",
    "iter_events",
    "parse_time_bound",
    "render_lines",
]
