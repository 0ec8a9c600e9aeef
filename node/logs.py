"""Structured logging that carries ids, never patient data.

Log records are emitted as one JSON object per line (or plain text). Callers
pass identifiers as keyword fields through :func:`log_event`; the formatter
refuses to print fields whose names suggest patient data.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

from node.config import LoggingSettings

#: Field names that must never reach a log line.
PHI_FIELD_NAMES = frozenset(
    {"patient_name", "patient_id", "patient_birth_date", "birth_date", "accession_number",
     "referring_physician", "reason_for_exam"}
)

_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRS and key not in PHI_FIELD_NAMES
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, event and id fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
        }
        payload.update(_extra_fields(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the id fields appended as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _extra_fields(record).items())
        base = (f"{self.formatTime(record)} {record.levelname:<7} {record.name}: "
                f"{record.getMessage()}")
        text = f"{base} {fields}" if fields else base
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(settings: LoggingSettings, stream: Any = None) -> None:
    """Install the radnode formatter on the root logger.

    Parameters
    ----------
    settings
        Level and format.
    stream
        Where to write (default: standard error).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.level)
    # pynetdicom's own debug output dumps DIMSE messages; keep it quiet.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Log ``event`` with identifier fields (study_id, job_id, sop_instance_uid…).

    Parameters
    ----------
    logger
        The module's logger.
    level
        A :mod:`logging` level.
    event
        A short, fixed event name such as ``"instance_stored"``.
    **fields
        Identifiers and measurements; PHI field names are rejected.

    Raises
    ------
    ValueError
        If a field name denotes patient data.
    """
    leaked = PHI_FIELD_NAMES.intersection(fields)
    if leaked:
        raise ValueError(f"refusing to log patient data fields: {sorted(leaked)}")
    logger.log(level, event, extra=fields)
