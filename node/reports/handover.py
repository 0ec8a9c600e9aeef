"""Storing the draft SRs that workers without the node's storage folder hand over.

A worker that fetches instances over HTTP cannot write into the node's storage. It builds
the draft SR as usual and records it in the report row (``reports.pending_sr_data``); the
node writes it to storage, sets ``sr_path`` and clears the bytes. The export service does
this at the start of each pass, so the SR is stored before its exports are claimed.
"""

from __future__ import annotations

import hashlib
import logging

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import Report, Study
from node.logs import log_event
from node.storage import InstanceStore

logger = logging.getLogger(__name__)

#: Reports stored by one call at most (the rest wait for the next pass).
BATCH_SIZE = 50


def store_handed_over_srs(sessions: sessionmaker[Session], store: InstanceStore) -> int:
    """Write every handed-over draft SR to storage; return how many were stored.

    An SR whose SOP Instance UID or study differ from its report row is left in place
    and logged (it is never stored under another report's name).
    """
    stored = 0
    with sessions.begin() as session:
        rows = session.execute(
            select(Report, Study.study_instance_uid)
            .join(Study, Study.id == Report.study_id)
            .where(Report.pending_sr_data.is_not(None), Report.sr_path.is_(None))
            .order_by(Report.id)
            .limit(BATCH_SIZE)
            .with_for_update(skip_locked=True, of=Report)
        ).all()
        for report, study_uid in rows:
            data = report.pending_sr_data
            assert data is not None
            header = dcmread(DicomBytesIO(data), stop_before_pixels=True)
            if (str(header.SOPInstanceUID) != report.sop_instance_uid
                    or str(header.StudyInstanceUID) != study_uid):
                log_event(logger, logging.ERROR, "handed_over_sr_mismatch",
                          report_id=report.id, study_id=report.study_id)
                continue
            relative = store.relative_path(study_uid, str(header.SeriesInstanceUID),
                                           str(header.SOPInstanceUID),
                                           hashlib.sha256(data).hexdigest())
            store.write(relative, data)
            report.sr_path = relative
            report.pending_sr_data = None
            stored += 1
            log_event(logger, logging.INFO, "handed_over_sr_stored", report_id=report.id,
                      study_id=report.study_id)
    return stored


__all__ = ["BATCH_SIZE", "store_handed_over_srs"]
