"""``radnode demo``: the whole node on embedded defaults with sample studies.

Sample studies are synthetic chest radiograph phantoms with fictional patients,
sent to the node over DICOM like a modality would, then drafted by the demo model.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]
from sqlalchemy import select

from node.db.models import Report, Study
from node.runtime import NodeServices
from node.states import StudyState

_FINISHED = frozenset({StudyState.DRAFTED, StudyState.SIGNED, StudyState.FAILED,
                       StudyState.IGNORED})


@dataclass(frozen=True)
class SampleStudy:
    """A generated study file and what the phantom shows."""

    path: Path
    study_uid: str
    findings_drawn: str


def phantom_dataset(pixels: np.ndarray, bits: int, index: int) -> Dataset:
    """Wrap phantom pixels in a DX For Presentation instance of a fictional patient."""
    now = dt.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = f"DEMO^PATIENT{index:02d}"
    ds.PatientID = f"DEMO{index:04d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = f"DEMOACC{index:04d}"
    ds.StudyID = str(index)
    ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST PA (synthetic demo)"
    ds.SeriesDescription = "PA"
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "radnode synthetic phantom"
    ds.ReasonForTheRequestedProcedure = "Shortness of breath."
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def describe_labels(labels: object) -> str:
    """Name what a phantom shows, e.g. ``"cardiomegaly, effusion (left)"``."""
    from workers.inference.synth.phantom import PhantomLabels

    assert isinstance(labels, PhantomLabels)
    parts = []
    if labels.cardiomegaly:
        parts.append("cardiomegaly")
    for name in ("effusion", "pneumothorax", "consolidation"):
        finding = getattr(labels, name)
        if finding is not None:
            side = getattr(finding, "side", None)
            parts.append(f"{name} ({side})" if side else name)
    if labels.edema:
        parts.append("edema")
    if labels.atelectasis:
        parts.append(f"atelectasis ({labels.atelectasis})")
    parts.extend(str(device) for device in labels.devices)
    return ", ".join(parts) or "normal"


def write_sample_studies(folder: Path, count: int, *, seed: int = 100) -> list[SampleStudy]:
    """Render ``count`` phantom studies into ``folder``."""
    from workers.inference.synth.phantom import random_phantom

    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for index in range(count):
        phantom = random_phantom(seed + index, size=512, bits=12)
        ds = phantom_dataset(phantom.pixels, phantom.bits, index + 1)
        path = folder / f"sample_{index + 1:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        drawn = describe_labels(phantom.labels)
        samples.append(SampleStudy(path, str(ds.StudyInstanceUID), drawn))
    return samples


def send_files(port: int, called_ae: str, files: Sequence[Path]) -> list[int]:
    """C-STORE ``files`` to the local node in one association; return the statuses."""
    from pydicom import dcmread

    ae = AE(ae_title="RADNODE_DEMO")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        raise RuntimeError("the node did not accept the demo association")
    statuses = []
    try:
        for path in files:
            status = assoc.send_c_store(dcmread(path))
            statuses.append(int(status.Status) if status else -1)
    finally:
        assoc.release()
    return statuses


def wait_for_drafts(services: NodeServices, study_uids: Sequence[str], timeout: float,
                    on_progress: Callable[[int, int], None]) -> dict[str, StudyState]:
    """Wait until every study is drafted (or otherwise finished), reporting progress."""
    deadline = time.monotonic() + timeout
    states: dict[str, StudyState] = {}
    while time.monotonic() < deadline:
        with services.database.sessions() as session:
            rows = session.execute(
                select(Study.study_instance_uid, Study.state).where(
                    Study.study_instance_uid.in_(study_uids)
                )
            )
            states = {uid: state for uid, state in rows}
        done = sum(1 for s in states.values() if s in _FINISHED)
        on_progress(done, len(study_uids))
        if done == len(study_uids):
            break
        time.sleep(0.5)
    return states


def draft_summaries(services: NodeServices, study_uids: Sequence[str]) -> list[tuple[str, str]]:
    """Return (study UID, first line of the draft findings) for drafted studies."""
    with services.database.sessions() as session:
        rows = session.execute(
            select(Study.study_instance_uid, Report.findings)
            .join(Report, Report.study_id == Study.id)
            .where(Study.study_instance_uid.in_(study_uids))
        )
        return [(uid, findings) for uid, findings in rows]
