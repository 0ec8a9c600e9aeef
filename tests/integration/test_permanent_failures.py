"""Deterministic drafting errors fail the job at once: never retried.

A study that holds two patients' images (merged before the patient identity policy
existed, or written by another tool) reaches the real drafting path with the demo model;
the SR builder refuses the mixed evidence and the job is FAILED after one attempt.
"""

from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select

from node.db.models import Instance, Job, Study
from node.dicom.header import parse_header
from node.dicom.ingest import InstanceIngestor, ReceivedInstance, describe_instance
from node.runtime import NodeServices
from node.states import JobState, StudyState
from tests.conftest import DEMO_BUNDLE_DIR, make_settings
from tests.dicom_factory import make_cxr_dataset
from tests.integration.dicom_net import wait_for


def _part10(ds: object) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)  # type: ignore[attr-defined]
    return buffer.getvalue()


def test_two_patients_in_one_study_fail_drafting_once(
        tmp_path: Path, database_url: str, demo_bundle_built: None) -> None:
    """Evidence of two patients is a permanent failure: FAILED with one attempt."""
    settings = make_settings(tmp_path, database_url, model={"bundle": str(DEMO_BUNDLE_DIR)},
                             assembly={"quiet_seconds": 0.5, "poll_seconds": 0.1})
    services = NodeServices.build(settings)
    study_uid = str(generate_uid())
    first = make_cxr_dataset(rows=128, cols=128, study_uid=study_uid, patient_id="P-1")
    second = make_cxr_dataset(rows=128, cols=128, study_uid=study_uid, patient_id="P-2",
                              view_position="LL", instance_number=2)
    outcome = InstanceIngestor(services.store, services.database.sessions).ingest(
        ReceivedInstance(_part10(first), str(first.SOPClassUID), str(first.SOPInstanceUID),
                         "MODALITY"))
    assert outcome.study_id is not None
    data = _part10(second)
    digest = hashlib.sha256(data).hexdigest()
    relative = services.store.relative_path(study_uid, str(second.SeriesInstanceUID),
                                            str(second.SOPInstanceUID), digest)
    services.store.write(relative, data)
    with services.database.sessions.begin() as session:
        merged = Instance(sop_instance_uid=str(second.SOPInstanceUID),
                          study_id=outcome.study_id, path=relative, size_bytes=len(data),
                          sha256=digest, calling_ae="OLDTOOL")
        describe_instance(merged, parse_header(data))
        session.add(merged)

    services.start()
    try:
        def failed() -> bool:
            with services.database.sessions() as session:
                return session.get_one(Study, outcome.study_id).state == StudyState.FAILED
        wait_for(failed, timeout=120, what="the mixed study to fail")
        with services.database.sessions() as session:
            job = session.scalars(select(Job)).one()
        assert job.state == JobState.FAILED
        assert job.error_class == "MixedStudyError"
        assert job.attempts == 1, "a deterministic error is not retried"
    finally:
        services.stop()
