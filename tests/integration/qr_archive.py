"""A small archive of studies for the Query/Retrieve and DICOMweb tests.

Three patients, four studies, one draft report SR::

    QR-A  ALPHA^ANNA  A1  20240105 093000  DX series (PA, LL) + draft SR series
    QR-A  ALPHA^ANNA  A2  20240320 141500  CR, stored JPEG-LS lossless
    QR-B  BETA^BORIS  B1  20231231 235900  CR "CHEST PA"
    QR-C  GAMMA^GUS   C1  20220202 080000  DX, two images (one file lost on disk)

Instances go in through the node's own ingest path (over DICOM or straight to the
ingestor); the draft SR is written by :func:`node.reports.drafts.write_draft_sr`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dsutils import split_dataset
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from node.db.models import Instance, Report, Study
from node.dicom.ingest import InstanceIngestor, ReceivedInstance
from node.dicom.statuses import StoreStatus
from node.reports.drafts import write_draft_sr
from node.reports.sr_content import ModelProvenance, ReportContent
from node.reports.sr_index import backfill_report_sr_index
from node.states import ReportState
from node.storage import InstanceStore
from tests.conftest import POSTGRES_ADMIN_URL
from tests.dicom_factory import compress_with_dcmtk, make_cxr_dataset, write_dataset


@dataclass
class StudyFiles:
    """One study of the archive: its UIDs and the files as sent."""

    uid: str
    series_uid: str
    patient_id: str
    sop_uids: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


@dataclass
class ArchiveContent:
    """What was put into the node."""

    studies: dict[str, StudyFiles]
    report_sop_uid: str = ""
    report_series_uid: str = ""
    lost_sop_uid: str = ""

    def study_uids(self, *names: str) -> set[str]:
        """The Study Instance UIDs of the named studies."""
        return {self.studies[name].uid for name in names}

    def name_of(self, study_uid: str) -> str:
        """The name (``A1``…) of a study by its UID."""
        return next(name for name, s in self.studies.items() if s.uid == study_uid)


_STUDIES = (
    # name, patient id, patient name, date, time, modality, accession, description, images
    ("A1", "QR-A", "ALPHA^ANNA", "20240105", "093000", "DX", "ACC-A1", "CHEST 2 VIEWS", 2),
    ("A2", "QR-A", "ALPHA^ANNA", "20240320", "141500", "CR", "ACC-A2", "CHEST AP", 1),
    ("B1", "QR-B", "BETA^BORIS", "20231231", "235900", "CR", "ACC-B1", "CHEST PA", 1),
    ("C1", "QR-C", "GAMMA^GUS", "20220202", "080000", "DX", "ACC-C1", "CHEST", 2),
)


def build_files(folder: Path) -> ArchiveContent:
    """Write the archive's image files under ``folder`` (A2 compressed with DCMTK)."""
    studies: dict[str, StudyFiles] = {}
    for name, patient_id, patient, date, time, modality, accession, description, images in (
        _STUDIES
    ):
        study = StudyFiles(generate_uid(), generate_uid(), patient_id)
        for number in range(1, images + 1):
            ds = make_cxr_dataset(
                study_uid=study.uid, series_uid=study.series_uid, modality=modality,
                rows=48, cols=48, patient_id=patient_id, patient_name=patient,
                accession_number=accession, instance_number=number, seed=number,
                view_position="PA" if number == 1 else "LL", series_description=description,
            )
            ds.StudyDate, ds.StudyTime, ds.StudyDescription = date, time, description
            path = write_dataset(ds, folder / f"{name}-{number}.dcm")
            if name == "A2":
                path = compress_with_dcmtk(path, folder / f"{name}-{number}-jls.dcm",
                                           "jpegls_lossless")
            study.sop_uids.append(str(ds.SOPInstanceUID))
            study.files.append(path)
        studies[name] = study
    return ArchiveContent(studies)


def all_files(content: ArchiveContent) -> list[Path]:
    """Every image file of the archive, in study order."""
    return [path for study in content.studies.values() for path in study.files]


def ingest_files(ingestor: InstanceIngestor, files: list[Path]) -> None:
    """Put ``files`` in through the node's ingestor, as a C-STORE would."""
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        outcome = ingestor.ingest(ReceivedInstance(
            encoded=path.read_bytes(), requested_sop_class_uid=str(ds.SOPClassUID),
            requested_sop_instance_uid=str(ds.SOPInstanceUID), calling_ae="TESTSCU",
        ))
        assert outcome.status == StoreStatus.SUCCESS, outcome.reason


def finish_archive(
    sessions: sessionmaker[Session], store: InstanceStore, content: ArchiveContent
) -> None:
    """Add the draft report of A1 and lose the second file of C1.

    The report row is written as rows from before the SR index existed were (without
    the SR's series and status attributes); :func:`backfill_report_sr_index`, which the
    node runs when it starts, then reads them from the stored SR.
    """
    a1 = content.studies["A1"]
    with sessions.begin() as session:
        rows = session.scalars(
            select(Instance).where(Instance.sop_instance_uid.in_(a1.sop_uids))
        ).all()
        study_id = rows[0].study_id
        paths = [store.absolute(row.path) for row in rows]
        model = ModelProvenance(name="radnode-cxr", version="2.1.0", manufacturer="radnode",
                                device_uid=generate_uid(), synthetic=False)
        stored = write_draft_sr(
            store, paths,
            ReportContent(findings="Lungs are clear.", impression="No acute disease."), model,
        )
        session.add(Report(study_id=study_id, state=ReportState.DRAFT,
                           findings="Lungs are clear.", impression="No acute disease.",
                           sop_instance_uid=stored.sop_instance_uid,
                           series_instance_uid=stored.series_instance_uid,
                           sr_path=stored.path))
        content.report_sop_uid = stored.sop_instance_uid
        content.report_series_uid = stored.series_instance_uid
        lost = content.studies["C1"].sop_uids[1]
        lost_path = session.scalars(
            select(Instance.path).where(Instance.sop_instance_uid == lost)
        ).one()
        store.absolute(lost_path).unlink()
        content.lost_sop_uid = lost
        assert session.scalar(select(Study.id).where(Study.study_instance_uid == a1.uid))
    assert backfill_report_sr_index(sessions, store) == 1


def stored_path(sessions: sessionmaker[Session], store: InstanceStore, sop_uid: str) -> Path:
    """The stored file of an instance or a report SR."""
    with sessions() as session:
        relative = session.scalar(
            select(Instance.path).where(Instance.sop_instance_uid == sop_uid)
        ) or session.scalar(select(Report.sr_path).where(Report.sop_instance_uid == sop_uid))
    assert relative is not None, sop_uid
    return store.absolute(relative)


def dataset_bytes(path: Path) -> bytes:
    """The data set part of a Part 10 file: everything after the file meta information."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def dataset_of(data: bytes) -> Dataset:
    """Decode a Part 10 byte string."""
    from io import BytesIO

    return dcmread(BytesIO(data))


@contextmanager
def database_url_for(backend: str, folder: Path) -> Iterator[str]:
    """A database URL for a module's worth of tests: a SQLite file or a fresh schema."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'radnode.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
