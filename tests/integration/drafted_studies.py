"""Draft synthetic demo studies through the real job path into a web test environment.

The studies' files go into the node's store with their rows, a job is queued and
:func:`workers.jobs.run_draft_job` drafts it with the demo model bundle, labels the draft,
writes the draft SR and records the report, as the worker does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from node.db.models import Instance, Job, Report, Study
from node.db.types import utcnow
from node.states import JobState, StudyState
from tests.integration.web_seed import WebEnv
from workers.context import BundleDrafter, build_job_context
from workers.inference.synth.studies import DemoStudy
from workers.jobs import run_draft_job


def store_study(env: WebEnv, study: DemoStudy) -> tuple[int, int]:
    """Store ``study``'s files with their rows and queue its job; return (study, job) ids."""
    first = dcmread(study.frontal, stop_before_pixels=True)
    now = utcnow()
    with env.database.sessions.begin() as session:
        row = Study(
            study_instance_uid=study.study_uid, state=StudyState.QUEUED,
            patient_id=str(first.PatientID), patient_name=str(first.PatientName),
            accession_number=study.accession, study_date=str(first.StudyDate),
            study_time=str(first.StudyTime), reason_for_exam=study.indication,
            first_received_at=now, last_received_at=now, stable_at=now)
        session.add(row)
        session.flush()
        for number, path in enumerate(study.files, 1):
            ds = dcmread(path, stop_before_pixels=True)
            data = Path(path).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            relative = env.store.relative_path(study.study_uid, str(ds.SeriesInstanceUID),
                                               str(ds.SOPInstanceUID), digest)
            env.store.write(relative, data)
            session.add(Instance(
                study_id=row.id, sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                series_instance_uid=str(ds.SeriesInstanceUID), series_number=number,
                instance_number=1, modality="DX", body_part="CHEST",
                view_position=str(ds.ViewPosition),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), rows=int(ds.Rows),
                columns=int(ds.Columns), path=relative, size_bytes=len(data), sha256=digest))
        job = Job(study_id=row.id, model_version="demo", state=JobState.QUEUED,
                  enqueued_at=now)
        session.add(job)
        session.flush()
        return row.id, job.id


def draft_studies(env: WebEnv, bundle: Path, studies: list[DemoStudy],
                  generation: dict[str, float | int] | None = None) -> dict[str, Report]:
    """Draft every study through :func:`run_draft_job`; return their reports by accession."""
    drafter = BundleDrafter(bundle, "cpu", generation or {})
    ctx = build_job_context(env.settings, sessions=env.database.sessions, drafter=drafter)
    jobs = {study.accession: store_study(env, study)[1] for study in studies}
    for job_id in jobs.values():
        assert run_draft_job(ctx, job_id) is None
    with env.database.sessions() as session:
        reports = {r.job_id: r for r in session.scalars(select(Report))}
        session.expunge_all()
    return {accession: reports[job_id] for accession, job_id in jobs.items()}
