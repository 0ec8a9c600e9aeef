"""The series and status attributes of the node's own report SRs, kept in the report row.

Query/Retrieve and QIDO-RS answer from the database, never from the SR files; so that a
viewer browsing by query can tell the unverified draft from the signed final, each
report row keeps its SR's Series Description and Number, Instance Number, Completion
and Verification Flags and Content Date and Time. They are taken from the dataset when
the SR is built; :func:`backfill_report_sr_index` reads them from the stored files for
rows written before these columns existed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import Report
from node.logs import log_event
from node.storage import InstanceStore

logger = logging.getLogger(__name__)

#: How many rows one backfill transaction updates.
BACKFILL_BATCH = 200


@dataclass(frozen=True)
class SrIndex:
    """The indexed attributes of one report SR (``None`` where the SR has none)."""

    sr_series_number: int | None
    sr_series_description: str | None
    sr_instance_number: int | None
    sr_completion_flag: str | None
    sr_verification_flag: str | None
    sr_content_date: str | None
    sr_content_time: str | None

    def columns(self) -> dict[str, Any]:
        """The values by :class:`~node.db.models.Report` column name."""
        return asdict(self)

    def apply(self, report: Report) -> None:
        """Set the values on ``report``."""
        for column, value in self.columns().items():
            setattr(report, column, value)


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text[:limit] or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def sr_index_of(ds: Dataset) -> SrIndex:
    """Read the indexed attributes of an SR dataset.

    Parameters
    ----------
    ds
        The SR as built or read from storage.

    Returns
    -------
    SrIndex
        Its Series Description and Number, Instance Number, Completion and
        Verification Flags, Content Date and Time.
    """
    return SrIndex(
        sr_series_number=_int(ds, "SeriesNumber"),
        sr_series_description=_text(ds, "SeriesDescription", 64),
        sr_instance_number=_int(ds, "InstanceNumber"),
        sr_completion_flag=_text(ds, "CompletionFlag", 16),
        sr_verification_flag=_text(ds, "VerificationFlag", 16),
        sr_content_date=_text(ds, "ContentDate", 8),
        sr_content_time=_text(ds, "ContentTime", 16),
    )


def sr_index_of_bytes(data: bytes) -> SrIndex:
    """:func:`sr_index_of` an encoded SR (Part 10 bytes)."""
    return sr_index_of(dcmread(BytesIO(data), stop_before_pixels=True))


def backfill_report_sr_index(sessions: sessionmaker[Session], store: InstanceStore) -> int:
    """Index the stored SRs of report rows that have none of the attributes yet.

    A row whose SR cannot be read is logged and left as it is (its SR stays listed,
    without these attributes); the next call tries it again.

    Parameters
    ----------
    sessions
        Database sessions.
    store
        Where the SR files are.

    Returns
    -------
    int
        How many rows were indexed.
    """
    indexed = 0
    skipped: set[int] = set()
    while True:
        with sessions.begin() as session:
            statement = (
                select(Report)
                .where(Report.sr_path.is_not(None), Report.sr_completion_flag.is_(None),
                       Report.id.not_in(skipped) if skipped else Report.id.is_not(None))
                .order_by(Report.id).limit(BACKFILL_BATCH)
            )
            reports = list(session.scalars(statement))
            if not reports:
                return indexed
            for report in reports:
                assert report.sr_path is not None
                try:
                    ds = dcmread(store.absolute(report.sr_path), stop_before_pixels=True)
                    index = sr_index_of(ds)
                except Exception as exc:
                    log_event(logger, logging.WARNING, "report_sr_unindexable",
                              report_id=report.id, error=type(exc).__name__)
                    skipped.add(report.id)
                    continue
                if index.sr_completion_flag is None:
                    skipped.add(report.id)  # not an SR with the flags; nothing to keep
                index.apply(report)
                indexed += 1


__all__ = ["BACKFILL_BATCH", "SrIndex", "backfill_report_sr_index", "sr_index_of",
           "sr_index_of_bytes"]
