"""Build radnode's chest radiograph reports as DICOM Comprehensive SR documents.

Two kinds of document, both built through highdicom from the same template
(``dicom_templates/chest_xr_report.toml``):

* a **draft** (:func:`build_draft_sr`): PARTIAL / UNVERIFIED / PRELIMINARY, written by the
  model (device observer), in its own series whose description says it is an unverified AI
  draft;
* a **final** report (:func:`build_final_sr`): COMPLETE / VERIFIED / FINAL, verified by a
  radiologist (Verifying Observer Sequence, person observer), whose Predecessor Documents
  Sequence points at the draft, or, for an amendment, at the final report it supersedes.

Patient and study attributes come from the evidence (the source images) and nothing else;
the images are referenced from the Current Requested Procedure Evidence Sequence.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from io import BytesIO
from pathlib import Path

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import Comprehensive3DSRStorage
from pydicom.valuerep import DA, DT, TM

from node.reports.sr_content import (
    ModelProvenance,
    ReportContent,
    Verifier,
    build_content_tree,
    check_long_string,
    clean_text,
)
from node.reports.sr_template import CodeSpec, ReportTemplate, load_report_template
from node.storage import is_valid_uid

SPECIFIC_CHARACTER_SET = "ISO_IR 192"
DEGENERATE_NOTICE = ("Degenerate draft: {reasons}. Neither its text nor the observations and "
                     "triage flags coded from it can be relied on.")
"""Notice of a degenerate draft when the template has no ``degenerate_notice`` wording."""
"""UTF-8: every SR is written in it, whatever the evidence used."""

_PIXEL_DATA = Tag(0x7FE0, 0x0010)
_PATIENT_SEX_VALUES = {"M", "F", "O"}
_TYPE2_HEADER = ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                 "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
_REQUIRED_EVIDENCE = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID",
                      "StudyInstanceUID", "PatientID")


class EvidenceError(ValueError):
    """The source images cannot be reported on together: one lacks an identifying
    attribute, they belong to different studies or patients, or one is given twice.
    Deterministic: retrying cannot help."""


def _software_version() -> str:
    try:
        return version("radnode")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _header_only(ds: Dataset) -> Dataset:
    """A copy of the header of ``ds`` (no pixel data), with tolerant Type 2 values.

    Elements are copied one by one, so the caller's dataset is never changed.
    Values highdicom would refuse (a Patient's Sex other than M/F/O, a malformed date or
    time) are emptied rather than stopping the report; absent Type 2 attributes are added
    empty. Nothing is added that the evidence does not carry.
    """
    header = Dataset()
    for element in ds:
        if element.tag >= _PIXEL_DATA:
            break
        header.add(copy.copy(element))
    for keyword in _TYPE2_HEADER:
        if keyword not in header:
            setattr(header, keyword, None)
    sex = str(header.PatientSex or "").strip().upper()
    header.PatientSex = sex if sex in _PATIENT_SEX_VALUES else None
    for keyword, parse in (("PatientBirthDate", DA), ("StudyDate", DA), ("StudyTime", TM)):
        value = header.get(keyword)
        if value:
            try:
                parse(value)
            except ValueError:
                setattr(header, keyword, None)
    return header


def _check_evidence(evidence: Sequence[Dataset]) -> list[Dataset]:
    """Check the source images and return header-only copies of them.

    Raises
    ------
    ValueError
        If there is no evidence, an instance lacks identifying attributes, the instances
        belong to different studies or patients, or one is given twice.
    """
    if isinstance(evidence, Dataset) or not evidence:
        raise EvidenceError("evidence must be a non-empty sequence of source image datasets")
    for ds in evidence:
        missing = [k for k in _REQUIRED_EVIDENCE if not ds.get(k)]
        if missing:
            raise EvidenceError(f"evidence instance lacks {', '.join(missing)}")
    studies = {str(ds.StudyInstanceUID) for ds in evidence}
    patients = {str(ds.PatientID) for ds in evidence}
    if len(studies) != 1 or len(patients) != 1:
        raise EvidenceError("all evidence must belong to one study of one patient")
    sop_uids = [str(ds.SOPInstanceUID) for ds in evidence]
    if len(set(sop_uids)) != len(sop_uids):
        raise EvidenceError("an evidence instance is given more than once")
    return [_header_only(ds) for ds in evidence]


def _check_uids(**uids: str) -> None:
    for what, value in uids.items():
        if not isinstance(value, str) or not is_valid_uid(value):
            raise EvidenceError(f"{what} {value!r} is not a valid DICOM UID")


def _coding_schemes(template: ReportTemplate,
                    extra_designators: Sequence[str]) -> list[CodingSchemeIdentificationItem]:
    """Declarations of the local schemes the document uses."""
    items: list[CodingSchemeIdentificationItem] = []
    used = {c.scheme for c in template.all_codes()} | set(extra_designators)
    for designator in sorted(d for d in used if d.startswith("99")):
        spec = template.coding_scheme(designator)
        if spec is None:
            items.append(CodingSchemeIdentificationItem(designator=designator))
        else:
            items.append(CodingSchemeIdentificationItem(
                designator=spec.designator, name=spec.name, version=spec.version,
                responsible_organization=spec.responsible_organization,
            ))
    return items


def _model_equipment(template: ReportTemplate, model: ModelProvenance, description: str,
                     contributed_at: dt.datetime | str | None) -> hd.ContributingEquipment:
    """The Contributing Equipment item of the model (IHE AIR algorithm identification)."""
    item = hd.ContributingEquipment(
        manufacturer=model.manufacturer,
        purpose_of_reference=template.codes["contributing_purpose"].concept(),
        manufacturer_model_name=model.name,
        software_versions=model.version,
        contribution_datetime=contributed_at,
        contribution_description=description,
    )
    item.DeviceUID = model.device_uid
    return item


def _model_contribution_time(predecessor: Dataset, device_uid: str) -> str | None:
    """When the model contributed to the predecessor (its Contribution DateTime), if recorded."""
    for item in predecessor.get("ContributingEquipmentSequence", []):
        if item.get("DeviceUID") == device_uid and item.get("ContributionDateTime"):
            return str(item.ContributionDateTime)
    return None


def _local(moment: dt.datetime) -> dt.datetime:
    """Wall-clock time for Content Date/Time (which carry no offset): local if aware."""
    return moment.astimezone() if moment.tzinfo is not None else moment


def _build(
    template: ReportTemplate,
    evidence: Sequence[Dataset],
    content: ReportContent,
    model: ModelProvenance,
    *,
    verifier: Verifier | None,
    notices: list[str],
    series_description: str,
    contribution: str,
    contributed_at: dt.datetime | str | None,
    content_datetime: dt.datetime,
    previous_versions: Sequence[Dataset] | None,
    amendment_reason: str | None = None,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    institution_name: str | None,
) -> Dataset:
    if not isinstance(content, ReportContent):
        raise TypeError("content must be a ReportContent")
    if not isinstance(model, ModelProvenance):
        raise TypeError("model must be a ModelProvenance")
    _check_uids(series_instance_uid=series_instance_uid, sop_instance_uid=sop_instance_uid)
    headers = _check_evidence(evidence)
    if institution_name is not None:
        check_long_string(institution_name, "institution name")
    if sop_instance_uid in {str(h.SOPInstanceUID) for h in headers}:
        raise ValueError("the SR's SOP Instance UID is that of an evidence instance")
    if series_instance_uid in {str(h.SeriesInstanceUID) for h in headers}:
        raise ValueError("the SR needs its own series, not one of the image series")
    sr_class = (hd.sr.Comprehensive3DSR if template.sop_class_uid == Comprehensive3DSRStorage
                else hd.sr.ComprehensiveSR)
    local_time = _local(content_datetime)
    extra_schemes = [verifier.identifier_scheme] if verifier is not None else []
    sr = sr_class(
        evidence=headers,
        content=build_content_tree(template, content, model, verifier=verifier,
                                   notices=notices, amendment_reason=amendment_reason),
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=template.manufacturer,
        is_complete=verifier is not None,
        is_final=verifier is not None,
        is_verified=verifier is not None,
        institution_name=institution_name,
        verifying_observer_name=verifier.name if verifier is not None else None,
        verifying_organization=verifier.organization if verifier is not None else None,
        previous_versions=previous_versions,
        contributing_equipment=[_model_equipment(template, model, contribution,
                                                 contributed_at)],
        specific_character_set=SPECIFIC_CHARACTER_SET,
        series_description=series_description,
        manufacturer_model_name=template.model_name,
        software_versions=_software_version(),
        coding_schemes=_coding_schemes(template, extra_schemes),
        content_date=local_time.date(),
        content_time=local_time.time(),
    )
    return sr


def build_draft_sr(
    evidence: Sequence[Dataset],
    content: ReportContent,
    model: ModelProvenance,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    institution_name: str | None = None,
    content_datetime: dt.datetime | None = None,
    template: ReportTemplate | None = None,
) -> Dataset:
    """Build the model's draft report: PARTIAL, UNVERIFIED, PRELIMINARY.

    Parameters
    ----------
    evidence
        The source images (headers suffice; pixel data is never copied). They must share
        one study and one patient, whose attributes the SR takes.
    content
        What the draft says.
    model
        The drafting model: device observer, algorithm identification and Contributing
        Equipment item (Device UID = the bundle's Device UID).
    series_instance_uid, sop_instance_uid
        UIDs of the SR; its series must not be one of the image series.
    series_number, instance_number
        Positive integers.
    institution_name
        Institution Name of the node, if it should be written.
    content_datetime
        When the draft was made (Content Date/Time, contribution time); now by default.
    template
        The report template; the packaged ``chest_xr_report.toml`` by default.

    Returns
    -------
    pydicom.dataset.Dataset
        A highdicom ``ComprehensiveSR`` (a pydicom dataset with file meta), ready for
        :func:`sr_to_bytes`. Its Series Description warns that it is an unverified AI draft.

    Raises
    ------
    ValueError
        On invalid UIDs or evidence (see :func:`_check_evidence`).
    """
    template = template or load_report_template()
    wording = template.wording
    notices = [wording["draft_notice"]]
    if model.synthetic:
        notices.append(wording["synthetic_notice"])
    if content.degeneracy:
        notices.append(wording.get("degenerate_notice", DEGENERATE_NOTICE).format(
            reasons="; ".join(content.degeneracy)))
    description = wording[
        "synthetic_draft_series_description" if model.synthetic else "draft_series_description"
    ]
    made_at = content_datetime or dt.datetime.now().astimezone()
    return _build(
        template, evidence, content, model, verifier=None, notices=notices,
        series_description=description, contribution=wording["draft_contribution"],
        contributed_at=made_at, content_datetime=made_at,
        previous_versions=None, series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid, series_number=series_number,
        instance_number=instance_number, institution_name=institution_name,
    )


def latest_verification(ds: Dataset) -> dt.datetime | None:
    """The latest Verification DateTime of an SR, or ``None`` if it has none readable."""
    moments: list[dt.datetime] = []
    for observer in ds.get("VerifyingObserverSequence", []):
        value = observer.get("VerificationDateTime")
        if value:
            try:
                moments.append(DT(value))
            except ValueError:
                continue
    if not moments:
        return None
    aware = [m for m in moments if m.tzinfo is not None]
    return max(aware) if len(aware) == len(moments) else max(m.replace(tzinfo=None)
                                                              for m in moments)


def _check_predecessor(predecessor: Dataset, study_uid: str, patient_id: str,
                       sop_instance_uid: str, amendment: bool,
                       verification_datetime: dt.datetime) -> None:
    if not isinstance(predecessor, Dataset) or predecessor.get("Modality") != "SR":
        raise ValueError("the predecessor must be an SR document dataset")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if not predecessor.get(keyword):
            raise ValueError(f"the predecessor lacks {keyword}")
    if str(predecessor.StudyInstanceUID) != study_uid or \
            str(predecessor.get("PatientID", "")) != patient_id:
        raise ValueError("the predecessor belongs to another study or patient")
    if str(predecessor.SOPInstanceUID) == sop_instance_uid:
        raise ValueError("the new report needs its own SOP Instance UID")
    verified = predecessor.get("VerificationFlag") == "VERIFIED"
    if amendment and not verified:
        raise ValueError("an amendment's predecessor must be a verified report")
    if not amendment and verified:
        raise ValueError("the predecessor is already verified: sign it as an amendment")
    previous = latest_verification(predecessor) if amendment else None
    comparable = previous is not None and (
        (previous.tzinfo is None) == (verification_datetime.tzinfo is None)
    )
    if comparable and previous is not None and verification_datetime <= previous:
        raise ValueError("an amendment must be verified after the report it amends")


def build_final_sr(
    evidence: Sequence[Dataset],
    content: ReportContent,
    model: ModelProvenance,
    predecessor: Dataset,
    verifier: Verifier,
    verification_datetime: dt.datetime,
    *,
    amendment: bool,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int,
    amendment_reason: str | None = None,
    institution_name: str | None = None,
    template: ReportTemplate | None = None,
) -> Dataset:
    """Build a verified report: COMPLETE, VERIFIED, FINAL.

    Parameters
    ----------
    evidence
        The source images, as for :func:`build_draft_sr`.
    content
        What the signed report says (the radiologist's text).
    model
        The model that drafted the report it was verified from (kept as device observer,
        algorithm identification and Contributing Equipment).
    predecessor
        The draft being signed, or for an amendment the final report it supersedes; it is
        referenced from the Predecessor Documents Sequence.
    verifier
        The radiologist: Verifying Observer Sequence (name, organization, identification
        code) and person observer of the content.
    verification_datetime
        Verification DateTime, written as given (with its UTC offset when aware).
    amendment
        ``False`` to sign a draft (the predecessor must be UNVERIFIED), ``True`` to amend a
        verified report (the predecessor must be VERIFIED and verified earlier).
    series_instance_uid, sop_instance_uid, series_number, instance_number, institution_name
        As for :func:`build_draft_sr`.
    amendment_reason
        Why the amendment is made (required, and only allowed, when ``amendment``): a
        "Reason for amendment" TEXT item after the amendment notice.
    template
        The report template; the packaged ``chest_xr_report.toml`` by default.

    Returns
    -------
    pydicom.dataset.Dataset
        A highdicom ``ComprehensiveSR`` ready for :func:`sr_to_bytes`.

    Raises
    ------
    ValueError
        On invalid evidence or UIDs, a predecessor of another study, a predecessor whose
        verification state does not match ``amendment``, or an amendment without a reason
        (or a reason without an amendment).
    """
    if not isinstance(verifier, Verifier):
        raise TypeError("verifier must be a Verifier")
    if not isinstance(verification_datetime, dt.datetime):
        raise TypeError("verification_datetime must be a datetime")
    if not isinstance(amendment, bool):
        raise TypeError("amendment must be a bool")
    if amendment:
        amendment_reason = clean_text(amendment_reason or "", "amendment reason")
        if not amendment_reason:
            raise ValueError("an amendment needs a reason")
    elif amendment_reason is not None:
        raise ValueError("only an amendment has a reason for amendment")
    headers = _check_evidence(evidence)
    _check_predecessor(predecessor, str(headers[0].StudyInstanceUID), str(headers[0].PatientID),
                       sop_instance_uid, amendment, verification_datetime)
    template = template or load_report_template()
    wording = template.wording
    notices: list[str] = []
    if model.synthetic:
        notices.append(wording["synthetic_notice"])
    if amendment:
        previous = latest_verification(predecessor)
        when = previous.isoformat(sep=" ", timespec="minutes") if previous else "an earlier time"
        notices.append(wording["amendment_notice"].format(predecessor_verified=when))
    sr = _build(
        template, evidence, content, model, verifier=verifier, notices=notices,
        series_description=wording["verified_series_description"],
        contribution=wording["final_contribution"],
        contributed_at=_model_contribution_time(predecessor, model.device_uid),
        content_datetime=verification_datetime, previous_versions=[predecessor],
        amendment_reason=amendment_reason,
        series_instance_uid=series_instance_uid, sop_instance_uid=sop_instance_uid,
        series_number=series_number, instance_number=instance_number,
        institution_name=institution_name,
    )
    observer = sr.VerifyingObserverSequence[0]
    observer.VerificationDateTime = DT(verification_datetime)
    code: CodeSpec = verifier.identification_code()
    observer.VerifyingObserverIdentificationCodeSequence = DicomSequence([code.concept()])
    return sr


def sr_to_bytes(ds: Dataset) -> bytes:
    """Encode an SR as a DICOM Part 10 stream (preamble, file meta, dataset)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_sr(ds: Dataset, path: Path | str) -> Path:
    """Write an SR as a Part 10 file at ``path`` (the folder must exist) and return it."""
    target = Path(path)
    target.write_bytes(sr_to_bytes(ds))
    return target


def read_sr(source: bytes | Path | str) -> Dataset:
    """Read a Part 10 SR (bytes or a file path) as a highdicom SR object.

    Raises
    ------
    ValueError
        If it is not an SR document of a SOP class highdicom reads.
    """
    stream = BytesIO(source) if isinstance(source, bytes) else Path(source)
    return hd.sr.srread(stream)


__all__ = [
    "SPECIFIC_CHARACTER_SET",
    "build_draft_sr",
    "build_final_sr",
    "latest_verification",
    "read_sr",
    "sr_to_bytes",
    "write_sr",
]
