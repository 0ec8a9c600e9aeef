"""Synthetic DICOM studies built from phantoms (demo data, benchmarks, end-to-end tests).

Each study holds a frontal (PA or AP) DX image of a phantom with known findings and, optionally,
a lateral view, with plausible request attributes (reason for the examination) and obviously
synthetic patient identity. Files are standard Part 10, Explicit VR Little Endian.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from workers.inference.synth.phantom import (
    Consolidation,
    Effusion,
    Phantom,
    PhantomLabels,
    Pneumothorax,
    random_phantom,
    render_phantom,
)
from workers.inference.synth.reports import INDICATIONS, write_report

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
def _uid(*parts: object) -> str:
    """A UID derived from ``parts`` under pydicom's root: the same parts, the same UID."""
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def _lateral_image(size: int, seed: int, bits: int) -> NDArray[np.uint16]:
    """A crude lateral chest: body ellipse, one lung field, spine and heart shadow."""
    rng = np.random.default_rng(seed)
    grid = (np.arange(size) + 0.5) / size
    v, u = np.meshgrid(grid, grid, indexing="ij")
    image = np.full((size, size), 0.03)
    body = ((u - 0.5) / 0.36) ** 2 + ((v - 0.58) / 0.55) ** 2 <= 1
    image[body] = 0.5
    lung = ((u - 0.48) / 0.24) ** 2 + ((v - 0.45) / 0.3) ** 2 <= 1
    image[lung] = 0.22
    heart = ((u - 0.38) / 0.13) ** 2 + ((v - 0.62) / 0.13) ** 2 <= 1
    image[heart & lung] = 0.55
    spine = (np.abs(u - 0.76) < 0.04) & body
    image[spine] = 0.7
    image += rng.normal(0, 0.01, size=image.shape)
    top = 2**bits - 1
    return np.asarray(np.rint(np.clip(image, 0, 1) * top), dtype=np.uint16)


def phantom_dataset(
    pixels: NDArray[np.uint16] | NDArray[np.uint8],
    bits: int,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    view_position: str,
    patient_id: str,
    patient_name: str,
    accession: str,
    study_time: datetime,
    indication: str | None,
    series_number: int = 1,
    instance_number: int = 1,
) -> Dataset:
    """Wrap stored phantom values in a DX For Presentation dataset (MONOCHROME2).

    The window spans the full stored range; the rescale is identity.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(DX_FOR_PRESENTATION)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_time.strftime("%Y%m%d")
    ds.StudyTime = study_time.strftime("%H%M%S")
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AccessionNumber = accession
    ds.Modality = "DX"
    ds.Manufacturer = "RADNODE SYNTHETIC"
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = accession[-8:]
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SeriesDescription = f"CHEST {view_position}"
    ds.PatientOrientation = ["L", "F"] if view_position in ("PA", "AP") else ["A", "F"]
    if indication:
        ds.ReasonForTheRequestedProcedure = indication
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    allocated = 8 if bits <= 8 else 16
    ds.BitsAllocated = allocated
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = "0"
    ds.RescaleType = "US"
    top = 2**bits
    ds.WindowCenter = f"{top // 2}"
    ds.WindowWidth = f"{top}"
    ds.PresentationLUTShape = "IDENTITY"
    dtype = np.uint8 if allocated == 8 else np.uint16
    ds.PixelData = np.ascontiguousarray(pixels, dtype=dtype).tobytes()
    ds["PixelData"].VR = "OB" if allocated == 8 else "OW"
    return ds


@dataclass(frozen=True)
class DemoStudy:
    """One written synthetic study."""

    study_uid: str
    accession: str
    files: tuple[Path, ...]
    frontal: Path
    labels: dict[str, Any]
    reference_report: str
    indication: str | None


def write_demo_studies(
    out_dir: Path | str,
    *,
    count: int = 4,
    seed: int = 0,
    size: int = 512,
    with_lateral: bool = True,
) -> list[DemoStudy]:
    """Write synthetic chest studies as DICOM files, one folder per study.

    Parameters
    ----------
    out_dir
        Destination; ``<out_dir>/<accession>/{frontal,lateral}.dcm`` and a ``truth.json``
        with the labels and a reference report per study.
    count
        Number of studies.
    seed
        Base seed; the same seed writes the same pixels and UIDs.
    size
        Image matrix size.
    with_lateral
        Add a lateral view (never the one drafted).

    Returns
    -------
    list of DemoStudy
    """
    phantoms = [random_phantom(seed * 10_000 + number, size=size) for number in range(count)]
    return _write_studies(Path(out_dir), phantoms, seed=seed, with_lateral=with_lateral)


@dataclass(frozen=True)
class SampleCase:
    """One study of the demo's sample set: the findings drawn and the seed of the drawing."""

    title: str
    labels: PhantomLabels
    render_seed: int
    indication: str | None = None


SAMPLE_CASES: tuple[SampleCase, ...] = (
    SampleCase("normal", PhantomLabels(ctr=0.43), 11, "Preoperative evaluation."),
    SampleCase("large right pneumothorax, central line (urgent)",
               PhantomLabels(ctr=0.45, pneumothorax=Pneumothorax("right", "large"),
                             devices=("central_line",)), 12, "Shortness of breath."),
    SampleCase("large left pleural effusion",
               PhantomLabels(ctr=0.44, effusion=Effusion("left", "large")), 13, None),
    SampleCase("cardiomegaly with pulmonary oedema",
               PhantomLabels(ctr=0.62, edema=True), 14, "Dyspnea, history of heart failure."),
    SampleCase("right lower lobe consolidation",
               PhantomLabels(ctr=0.42, consolidation=Consolidation("right", "lower")), 15,
               "Cough and fever."),
    SampleCase("support devices, otherwise normal",
               PhantomLabels(ctr=0.44, devices=("ett", "ng_tube"), ett_cm_above_carina=4), 16,
               "Line placement."),
)
"""The demo's sample set: normal and urgent studies and the common findings, fixed so that
every newcomer sees the same cases (their UIDs change with each run)."""


def write_sample_studies(
    out_dir: Path | str,
    *,
    run: int = 0,
    size: int = 512,
    with_lateral: bool = True,
    cases: tuple[SampleCase, ...] = SAMPLE_CASES,
) -> list[DemoStudy]:
    """Write the demo's sample set (:data:`SAMPLE_CASES`) as DICOM studies.

    Parameters
    ----------
    out_dir
        Destination, laid out as in :func:`write_demo_studies`.
    run
        Seed of the identities and UIDs only: each run sends new studies with the same
        pixels and findings.
    size
        Image matrix size.
    with_lateral
        Add a lateral view.
    cases
        The cases to write.

    Returns
    -------
    list of DemoStudy
    """
    phantoms = [render_phantom(case.labels, size=size, seed=case.render_seed)
                for case in cases]
    return _write_studies(Path(out_dir), phantoms, seed=run, with_lateral=with_lateral,
                          indications=[case.indication for case in cases], namespace="sample-")


def _write_studies(
    root: Path,
    phantoms: list[Phantom],
    *,
    seed: int,
    with_lateral: bool,
    indications: list[str | None] | None = None,
    namespace: str = "",
) -> list[DemoStudy]:
    root.mkdir(parents=True, exist_ok=True)
    studies: list[DemoStudy] = []
    truth: list[dict[str, Any]] = []
    start = datetime(2024, 1, 8, 8, 0, 0)
    for number, phantom in enumerate(phantoms):
        size = int(phantom.pixels.shape[0])
        rng = np.random.default_rng([seed, number, 0x57D])
        drawn = (
            INDICATIONS[int(rng.integers(0, len(INDICATIONS)))] if rng.random() < 0.7 else None
        )
        indication = drawn if indications is None else indications[number]
        accession = f"{'SMP' if namespace else 'SYN'}{seed % 1000:03d}{number:05d}"
        study_uid = _uid(namespace + "study", seed, number)
        when = start + timedelta(minutes=17 * number)
        common: dict[str, Any] = {
            "study_uid": study_uid,
            "patient_id": f"SYNTH-{seed:03d}-{number:04d}",
            "patient_name": f"SYNTHETIC^DEMO{number:04d}",
            "accession": accession,
            "study_time": when,
            "indication": indication,
        }
        folder = root / accession
        folder.mkdir(parents=True, exist_ok=True)
        view = "AP" if phantom.labels.devices else "PA"
        frontal_ds = phantom_dataset(
            phantom.pixels,
            phantom.bits,
            series_uid=_uid(namespace + "series", seed, number, 1),
            sop_uid=_uid(namespace + "sop", seed, number, 1),
            view_position=view,
            **common,
        )
        frontal = folder / "frontal.dcm"
        frontal_ds.save_as(frontal, enforce_file_format=True)
        files = [frontal]
        if with_lateral:
            lateral_ds = phantom_dataset(
                _lateral_image(size, seed * 10_000 + number, phantom.bits),
                phantom.bits,
                series_uid=_uid(namespace + "series", seed, number, 2),
                sop_uid=_uid(namespace + "sop", seed, number, 2),
                view_position="LL",
                series_number=2,
                **common,
            )
            lateral = folder / "lateral.dcm"
            lateral_ds.save_as(lateral, enforce_file_format=True)
            files.append(lateral)
        report = write_report(phantom.labels, rng).text
        study = DemoStudy(
            study_uid=study_uid,
            accession=accession,
            files=tuple(files),
            frontal=frontal,
            labels=phantom.labels.to_dict(),
            reference_report=report,
            indication=indication,
        )
        studies.append(study)
        truth.append(
            {
                "study_uid": study_uid,
                "accession": accession,
                "labels": study.labels,
                "reference_report": report,
                "indication": indication,
            }
        )
    (root / "truth.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    return studies


__all__ = ["SAMPLE_CASES", "DemoStudy", "SampleCase", "phantom_dataset", "write_demo_studies",
           "write_sample_studies"]
