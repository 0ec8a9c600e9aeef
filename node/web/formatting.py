"""Jinja filters: DICOM names, dates and times, ages and byte counts, for people to read."""

from __future__ import annotations

import datetime as dt
from typing import Any

from jinja2 import Environment

from workers.inference.degeneracy import describe


def person_name(value: str | None) -> str:
    """``FAMILY^Given^Middle`` as ``FAMILY, Given Middle`` (empty for none)."""
    if not value:
        return ""
    alphabetic = str(value).split("=", 1)[0]
    parts = [p.strip() for p in alphabetic.split("^")]
    family = parts[0] if parts else ""
    rest = " ".join(p for p in (parts[3:4] + parts[1:3] + parts[4:5]) if p)
    if family and rest:
        return f"{family}, {rest}"
    return family or rest


def dicom_date(value: str | None) -> str:
    """``YYYYMMDD`` as ``YYYY-MM-DD`` (other values unchanged)."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


def dicom_time(value: str | None) -> str:
    """``HHMMSS.ffff`` as ``HH:MM``."""
    if value and len(value) >= 4 and value[:4].isdigit():
        return f"{value[:2]}:{value[2:4]}"
    return value or ""


def local_time(value: dt.datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """An aware timestamp in the node's local time."""
    if value is None:
        return ""
    return value.astimezone().strftime(fmt)


def duration(seconds: float | None) -> str:
    """A duration as ``45 s``, ``12 min``, ``3 h 05 min`` or ``2 d 4 h``."""
    if seconds is None:
        return "–"
    seconds = max(float(seconds), 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def age(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """How long ago ``value`` was."""
    if value is None:
        return ""
    now = now or dt.datetime.now(dt.UTC)
    return duration((now - value).total_seconds())


def byte_size(value: float | None) -> str:
    """A byte count in binary units."""
    if value is None:
        return "–"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def patient_age(birth_date: str | None, study_date: str | None) -> str:
    """Age at the study, e.g. ``64 y``, from DICOM dates (empty when unknown)."""
    try:
        born = dt.datetime.strptime(birth_date or "", "%Y%m%d").date()
        seen = dt.datetime.strptime(study_date or "", "%Y%m%d").date()
    except ValueError:
        return ""
    years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return f"{years} y" if years >= 0 else ""


def degeneracy_text(reasons: list[str] | None) -> list[str]:
    """Why a draft is degenerate, in words, from the stored reason values."""
    return describe(tuple(reasons or ()))


def install_filters(env: Environment) -> None:
    """Register the filters on a Jinja environment."""
    filters: dict[str, Any] = {
        "person_name": person_name, "dicom_date": dicom_date, "dicom_time": dicom_time,
        "local_time": local_time, "duration": duration, "age": age, "byte_size": byte_size,
        "patient_age": patient_age, "degeneracy_text": degeneracy_text,
    }
    env.filters.update(filters)
