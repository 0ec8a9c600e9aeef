"""Phantom radiographs with known values, geometry and orientation, stored the way the node
stores instances, for the viewer's tests and benchmark."""

from __future__ import annotations

import datetime as dt
import hashlib
from io import BytesIO
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.db.models import Instance, Report, Study
from node.db.types import utcnow
from node.runtime import Database
from node.states import ReportState, StudyState
from node.storage import InstanceStore
from tests.dicom_factory import make_cxr_dataset
from workers.inference.preprocess import unit_to_uint8, window_to_unit


def gradient_phantom(rows: int, columns: int, *, step_x: int = 650,
                     step_y: int = 10) -> NDArray[np.uint16]:
    """Stored values ``step_x * column + step_y * row`` (16 bits): every window shows."""
    r, c = np.mgrid[0:rows, 0:columns]
    values = step_x * c + step_y * r
    assert values.max() <= 65535
    return values.astype(np.uint16)


def expected_grey(modality: NDArray[Any], center: float, width: float, *,
                  invert: bool = False) -> NDArray[np.int16]:
    """The 8-bit grey of modality values under a LINEAR window (PS3.3 C.11.2.1.2)."""
    grey = unit_to_uint8(window_to_unit(np.asarray(modality, dtype=np.float64), center, width))
    out = grey.astype(np.int16)
    return 255 - out if invert else out


def add_study(database: Database, *, patient_id: str, study_date: str = "20240517",
              study_time: str = "093000", description: str = "XR CHEST PA",
              issuer: str | None = None, patient_name: str = "VIEW^PHANTOM",
              accession: str = "ACC9000",
              state: StudyState = StudyState.DRAFTED) -> Study:
    """A study row."""
    now = utcnow()
    with database.sessions.begin() as session:
        study = Study(
            study_instance_uid=str(generate_uid()), state=state, patient_id=patient_id,
            issuer_of_patient_id=issuer, patient_name=patient_name,
            patient_birth_date="19600101", patient_sex="O", accession_number=accession,
            study_date=study_date, study_time=study_time, study_description=description,
            first_received_at=now, last_received_at=now, stable_at=now)
        session.add(study)
        session.flush()
        session.expunge(study)
        return study


def phantom_dataset(study: Study, image: NDArray[Any], *, view_position: str | None = "PA",
                    instance_number: int = 1, photometric: str = "MONOCHROME2",
                    rescale: tuple[float, float] = (1.0, -1024.0),
                    windows: list[tuple[float, float]] | None = None,
                    **attributes: Any) -> Dataset:
    """A DX dataset of ``study`` holding ``image`` as stored values, plus ``attributes``."""
    ds = make_cxr_dataset(
        study_uid=study.study_instance_uid, patient_name=study.patient_name or "",
        patient_id=study.patient_id or "", accession_number=study.accession_number or "",
        view_position=view_position, instance_number=instance_number, bits=16,
        photometric=photometric, image=image, rescale=rescale, windows=windows)
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def store_dataset(database: Database, store: InstanceStore, study: Study,
                  ds: Dataset) -> int:
    """Write ``ds`` into storage with its instance row; return the row id."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    relative = store.relative_path(study.study_instance_uid, str(ds.SeriesInstanceUID),
                                   str(ds.SOPInstanceUID), digest)
    store.write(relative, data)
    with database.sessions.begin() as session:
        instance = Instance(
            study_id=study.id, sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID), series_instance_uid=str(ds.SeriesInstanceUID),
            series_number=1, instance_number=int(ds.InstanceNumber), modality=str(ds.Modality),
            body_part="CHEST", view_position=ds.get("ViewPosition"),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), rows=int(ds.Rows),
            columns=int(ds.Columns), path=relative, size_bytes=len(data), sha256=digest)
        session.add(instance)
        session.flush()
        return instance.id


def add_report(database: Database, study: Study, state: ReportState, *, findings: str,
               impression: str, signed_at: dt.datetime | None = None,
               predecessor_id: int | None = None) -> int:
    """A report version of ``study`` (no SR file)."""
    with database.sessions.begin() as session:
        report = Report(study_id=study.id, state=state, findings=findings,
                        impression=impression, model_name="radnode-cxr-demo",
                        model_version="0.3.1", signed_at=signed_at,
                        predecessor_id=predecessor_id, created_at=utcnow())
        session.add(report)
        session.flush()
        return report.id
