"""Radiologist sign-off: sign a draft, amend a final report, reject a draft.

Plain functions on the caller's SQLAlchemy session (no web here); the caller commits, then
wakes the exporter. Every version is a new :class:`~node.db.models.Report` row and a new SR
file whose Predecessor Documents Sequence points at the version it supersedes:

* :func:`sign_report` — the draft becomes a FINAL report (COMPLETE / VERIFIED / FINAL SR);
  the study becomes SIGNED and the SR is queued for every destination; the draft is
  withdrawn from the destinations (:func:`~node.exports.rejection.withdraw_draft`: not sent
  any more, and an IOCM rejection note for each destination that received it);
* :func:`amend_report` — a new FINAL report supersedes the current one, whose row becomes
  AMENDED (the DICOM amendment is the newer VERIFIED + FINAL SR with the later
  Verification DateTime);
* :func:`reject_draft` — the draft is marked rejected with a reason and withdrawn from the
  destinations likewise; the study stays DRAFTED and the radiologist may still write and
  sign a report from it.

A version can be superseded only once (``reports.predecessor_id`` is unique, and the
predecessor row is locked while the new version is written), so a double-click or two
radiologists signing at once make exactly one final report; the loser gets
:class:`AlreadySigned`. Only active radiologists may sign, amend or reject.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import logging
from collections.abc import Iterable
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, undefer

from node.config import Destination, QualitySettings
from node.db.models import AuditEvent, Instance, Report, Study, User
from node.db.types import utcnow
from node.exports.rejection import withdraw_draft
from node.exports.service import queue_exports
from node.logs import log_event
from node.quality.labels import Labeler
from node.quality.monitor import record_signoff_agreement
from node.reports.evidence import EvidenceChanged, record_evidence, verify_evidence
from node.reports.rejection_note import RejectionCause
from node.reports.sr_builder import build_final_sr, sr_to_bytes
from node.reports.sr_content import (
    ModelProvenance,
    ReportContent,
    Verifier,
    clean_text,
    read_report_content,
)
from node.reports.sr_index import sr_index_of
from node.reports.sr_language import template_in_language
from node.reports.sr_template import load_report_template
from node.states import ReportState, Role, StudyState
from node.storage import InstanceStore

logger = logging.getLogger(__name__)

#: Series number of the node's verified reports (drafts are in 9001).
FINAL_SERIES_NUMBER = 9002
#: Verifying Organization written when the user has none recorded.
UNKNOWN_ORGANIZATION = "Unknown organization"
#: Longest rejection or amendment reason kept.
MAX_REASON_LENGTH = 1000

_SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: Patient attributes (group 0010) travel from a predecessor SR to its successor.
_PATIENT_GROUP = 0x0010
#: Study attributes that travel from a predecessor SR to its successor.
_STUDY_KEYWORDS = frozenset({
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "ReferringPhysicianName", "StudyDescription",
    "ProcedureCodeSequence", "ReferencedStudySequence",
})


class SignoffError(ValueError):
    """A sign-off, amendment or rejection that cannot be done as asked."""


class ReportNotFound(SignoffError):
    """No report has the given id."""


class NotPermitted(SignoffError):
    """The user may not sign, amend or reject (not an active radiologist)."""


class EvidenceMismatch(SignoffError):
    """A stored image no longer holds what was signed (or what its row records)."""

    def __init__(self, changed: EvidenceChanged) -> None:
        super().__init__(str(changed))
        self.changed = changed


class AlreadySigned(SignoffError):
    """The version was already superseded: signed, amended or rejected by someone else."""


class ConfirmationRequired(SignoffError):
    """The draft of an urgent study is signed unedited: the radiologist must confirm it."""


def final_series_uid(study_uid: str) -> str:
    """Series Instance UID of the verified reports of ``study_uid`` (one series per study)."""
    return str(generate_uid(entropy_srcs=[study_uid, "radnode-final-series"]))


def verifier_of(user: User) -> Verifier:
    """The Verifying Observer a user signs as.

    Raises
    ------
    SignoffError
        If the user's display name is not a DICOM person name (``Family^Given``).
    """
    try:
        return Verifier(
            name=user.display_name,
            organization=(user.organization or UNKNOWN_ORGANIZATION)[:64],
            identifier=(user.person_identifier or user.username)[:64],
            login_name=user.username[:64],
        )
    except ValueError as exc:
        raise SignoffError(f"the user cannot sign: {exc}") from exc


def _check_radiologist(user: User) -> None:
    if user.role != Role.RADIOLOGIST or not user.active:
        raise NotPermitted("only an active radiologist may sign, amend or reject reports")


def _locked_report(session: Session, report_id: int) -> Report:
    report = session.get(Report, report_id, with_for_update=True, populate_existing=True,
                         options=[undefer(Report.pending_sr_data)])
    if report is None:
        raise ReportNotFound(f"no report {report_id}")
    return report


def _successor_id(session: Session, report_id: int) -> int | None:
    return session.scalar(select(Report.id).where(Report.predecessor_id == report_id))


def _content(findings: str, impression: str, previous: ReportContent | None) -> ReportContent:
    try:
        return ReportContent(
            findings=findings, impression=impression,
            urgent=previous.urgent if previous is not None else False,
            flags=previous.flags if previous is not None else (),
        )
    except (TypeError, ValueError) as exc:
        raise SignoffError(str(exc)) from exc


def _evidence(session: Session, store: InstanceStore, study: Study,
              predecessor: Dataset) -> list[Dataset]:
    """The source images the new version references.

    The headers of the study's stored images; once the retention clean-up has removed them
    all, the images the predecessor SR references, described from that SR.
    """
    paths = session.scalars(
        select(Instance.path)
        .where(Instance.study_id == study.id, Instance.purged_at.is_(None))
        .order_by(Instance.id)
    ).all()
    headers: list[Dataset] = [dcmread(store.absolute(p), stop_before_pixels=True)
                              for p in paths]
    headers = [h for h in headers if not str(h.SOPClassUID).startswith(_SR_SOP_CLASS_PREFIX)]
    if headers:
        return headers
    referenced = _evidence_of(predecessor)
    if not referenced:
        raise SignoffError("the study's images are not stored; the report cannot reference them")
    return referenced


def _evidence_of(predecessor: Dataset) -> list[Dataset]:
    """Stand-ins for the images ``predecessor`` references as current evidence.

    Each carries the referenced SOP class, instance and series, and the patient and study
    attributes of the predecessor (which it took from those images).
    """
    shared = Dataset()
    for element in predecessor:
        if element.tag.group == _PATIENT_GROUP or element.keyword in _STUDY_KEYWORDS:
            shared.add(copy.deepcopy(element))
    stand_ins: list[Dataset] = []
    for study_item in predecessor.get("CurrentRequestedProcedureEvidenceSequence", []):
        if str(study_item.get("StudyInstanceUID", "")) != str(predecessor.StudyInstanceUID):
            continue
        for series_item in study_item.get("ReferencedSeriesSequence", []):
            for sop_item in series_item.get("ReferencedSOPSequence", []):
                stand_in = copy.deepcopy(shared)
                stand_in.SOPClassUID = sop_item.ReferencedSOPClassUID
                stand_in.SOPInstanceUID = sop_item.ReferencedSOPInstanceUID
                stand_in.SeriesInstanceUID = series_item.SeriesInstanceUID
                stand_ins.append(stand_in)
    return stand_ins


def _is_synthetic(ds: Dataset) -> bool:
    wording = load_report_template().wording
    if str(ds.get("SeriesDescription", "")) == wording["synthetic_draft_series_description"]:
        return True
    notice = wording["synthetic_notice"]
    return any(str(item.get("TextValue", "")) == notice for item in ds.get("ContentSequence", []))


def _model_of(report: Report, predecessor: Dataset) -> ModelProvenance:
    """The drafting model, from the predecessor SR's Contributing Equipment and the row."""
    device_uid = report.device_uid
    item: Dataset | None = None
    for candidate in predecessor.get("ContributingEquipmentSequence", []):
        if candidate.get("DeviceUID") and (device_uid is None
                                           or candidate.DeviceUID == device_uid):
            item = candidate
            break
    name = report.model_name or (item.get("ManufacturerModelName") if item else None)
    version = report.model_version or (item.get("SoftwareVersions") if item else None)
    device_uid = device_uid or (item.get("DeviceUID") if item else None)
    if not (name and version and device_uid):
        raise SignoffError("the draft does not record which model wrote it")
    if isinstance(version, list | tuple):
        version = version[0]
    manufacturer = str(item.get("Manufacturer") or "radnode") if item else "radnode"
    try:
        return ModelProvenance(name=str(name)[:64], version=str(version)[:64],
                               manufacturer=manufacturer[:64], device_uid=str(device_uid),
                               synthetic=_is_synthetic(predecessor))
    except ValueError as exc:
        raise SignoffError(f"the draft's model provenance is invalid: {exc}") from exc


def _read_predecessor(store: InstanceStore, report: Report) -> Dataset:
    """The SR of ``report``: its file, or the bytes a worker handed over and the node has
    not stored yet (:mod:`node.reports.handover`)."""
    if report.sr_path is not None:
        return dcmread(store.absolute(report.sr_path))
    if report.pending_sr_data is None:
        raise SignoffError("the report has no SR file to supersede")
    try:
        return dcmread(DicomBytesIO(report.pending_sr_data))
    except InvalidDicomError as exc:
        raise SignoffError("the report's SR cannot be read") from exc


def _audit(session: Session, now: dt.datetime, user: User, action: str, report: Report,
           details: dict[str, Any]) -> None:
    session.add(AuditEvent(
        at=now, actor=user.username, user_id=user.id, action=action, object_type="report",
        object_id=str(report.id), study_id=report.study_id, details=details,
    ))


def _write_version(
    session: Session,
    store: InstanceStore,
    predecessor: Report,
    user: User,
    findings: str,
    impression: str,
    now: dt.datetime,
    *,
    amendment: bool,
    amendment_reason: str | None = None,
    language: str | None = None,
) -> Report:
    """Build, store and record a verified version superseding ``predecessor`` (locked)."""
    study = session.get(Study, predecessor.study_id, with_for_update=True)
    assert study is not None
    predecessor_ds = _read_predecessor(store, predecessor)
    try:
        previous = read_report_content(predecessor_ds)
    except ValueError:
        previous = None
    content = _content(findings, impression, previous)
    if amendment and previous is not None and (
            (previous.findings, previous.impression) == (content.findings, content.impression)):
        raise SignoffError("the amendment changes nothing")
    try:
        if amendment:
            verify_evidence(session, store, study.id)
        signed_evidence = record_evidence(session, store, study.id)
    except EvidenceChanged as exc:
        raise EvidenceMismatch(exc) from exc
    evidence = _evidence(session, store, study, predecessor_ds)
    model = _model_of(predecessor, predecessor_ds)
    verifier = verifier_of(user)
    series_uid = final_series_uid(study.study_instance_uid)
    sop_uid = str(generate_uid())
    earlier = session.scalar(
        select(func.count(Report.id)).where(Report.study_id == study.id,
                                            Report.signed_at.is_not(None))
    ) or 0
    try:
        dataset = build_final_sr(
            evidence, content, model, predecessor_ds, verifier, now.astimezone(),
            amendment=amendment, series_instance_uid=series_uid, sop_instance_uid=sop_uid,
            series_number=FINAL_SERIES_NUMBER, instance_number=earlier + 1,
            amendment_reason=amendment_reason, template=template_in_language(language),
        )
    except ValueError as exc:
        raise SignoffError(f"the signed report cannot be built: {exc}") from exc
    data = sr_to_bytes(dataset)
    relative = store.relative_path(study.study_instance_uid, series_uid, sop_uid,
                                   hashlib.sha256(data).hexdigest())
    store.write(relative, data)
    version = Report(
        study_id=study.id, state=ReportState.FINAL, findings=content.findings,
        impression=content.impression, model_name=model.name, model_version=model.version,
        device_uid=model.device_uid, sop_instance_uid=sop_uid, series_instance_uid=series_uid,
        sr_path=relative, predecessor_id=predecessor.id, signed_by_id=user.id, signed_at=now,
        created_at=now, signed_evidence=signed_evidence, amendment_reason=amendment_reason,
        **sr_index_of(dataset).columns(),
    )
    try:
        with session.begin_nested():
            session.add(version)
            session.flush()
    except IntegrityError as exc:
        store.remove(relative)
        raise AlreadySigned("this report was signed or amended by someone else just now") \
            from exc
    if amendment:
        predecessor.state = ReportState.AMENDED
    study.state = StudyState.SIGNED
    study.state_reason = None
    return version


def sign_report(
    session: Session,
    store: InstanceStore,
    report_id: int,
    user: User,
    findings: str,
    impression: str,
    *,
    now: dt.datetime | None = None,
    destinations: Iterable[Destination] = (),
    quality: QualitySettings | None = None,
    labeler: Labeler | None = None,
    language: str | None = None,
    confirm_unedited_urgent: bool = False,
    unedited_urgent_confirmed: bool = False,
) -> Report:
    """Sign a draft: write the verified SR and record the FINAL report.

    The signed text is labelled and its agreement with the draft recorded per CheXpert
    observation (:func:`node.quality.monitor.record_signoff_agreement`); a failure there
    is logged and does not stop the signature.

    Parameters
    ----------
    session
        The caller's session; flushed, not committed. Commit, then wake the exporter.
    store
        Where the draft SR and the images are and the final SR goes.
    report_id
        The draft to sign.
    user
        The signing radiologist (verifying observer).
    findings, impression
        The text as signed (edited or not).
    now
        Verification time (aware); the current time by default.
    destinations
        Where the signed SR is delivered (one PENDING export each).
    quality
        Agreement window, threshold and minimum reports; the defaults when ``None``.
    labeler
        The CheXpert labeler; the node's own by default.
    language
        RFC 5646 tag of the SR's language when the signer has none of their own
        (``users.language``): the site's ``[reports] language``; en-US when ``None``.
    confirm_unedited_urgent
        Refuse to sign the unedited draft of an urgent study unless
        ``unedited_urgent_confirmed`` (the site setting ``[web] confirm_unedited_urgent``).
    unedited_urgent_confirmed
        The radiologist confirmed signing the urgent draft unedited; recorded in the
        audit trail (``unedited_urgent_confirmed``).

    Returns
    -------
    Report
        The new FINAL report; its ``predecessor_id`` is the draft.

    Raises
    ------
    NotPermitted
        If the user is not an active radiologist.
    ReportNotFound
        If there is no such report.
    AlreadySigned
        If the draft (or another draft of the study) is already signed.
    ConfirmationRequired
        If an urgent study's draft is signed unedited without the confirmation asked for.
    EvidenceMismatch
        If a stored image file no longer holds the digest recorded when it was received.
    SignoffError
        If the report is not a draft, the text is empty or invalid, or the study's images
        are missing.
    """
    now = now or utcnow()
    _check_radiologist(user)
    draft = _locked_report(session, report_id)
    if draft.state != ReportState.DRAFT:
        raise SignoffError("only a draft can be signed; amend a signed report instead")
    if _successor_id(session, draft.id) is not None:
        raise AlreadySigned("this draft is already signed")
    signed = session.scalar(select(Report.id).where(
        Report.study_id == draft.study_id,
        Report.state.in_([ReportState.FINAL, ReportState.AMENDED])))
    if signed is not None:
        raise AlreadySigned("the study already has a signed report; amend it instead")
    study = session.get_one(Study, draft.study_id)
    unedited = (findings.strip(), impression.strip()) == (draft.findings.strip(),
                                                          draft.impression.strip())
    urgent_unedited = unedited and study.urgent
    if urgent_unedited and confirm_unedited_urgent and not unedited_urgent_confirmed:
        raise ConfirmationRequired("this urgent draft is unedited: confirm that you sign it "
                                   "as the model wrote it")
    final = _write_version(session, store, draft, user, findings, impression, now,
                           amendment=False, language=user.language or language)
    if urgent_unedited and unedited_urgent_confirmed:
        _audit(session, now, user, "unedited_urgent_confirmed", draft, {
            "urgent_findings": list(study.urgent_findings or []),
        })
    queue_exports(session, final, destinations, now=now)
    withdraw_draft(session, store, draft, RejectionCause.SUPERSEDED, now=now)
    record_signoff_agreement(session, draft, final, quality or QualitySettings(), labeler)
    edited = (final.findings, final.impression) != (draft.findings.strip(),
                                                     draft.impression.strip())
    _audit(session, now, user, "report_signed", final, {
        "draft_report_id": draft.id, "sop_instance_uid": final.sop_instance_uid,
        "edited": edited, "draft_rejected": draft.rejected_at is not None,
    })
    session.flush()
    log_event(logger, logging.INFO, "report_signed", report_id=final.id,
              draft_report_id=draft.id, study_id=final.study_id, user_id=user.id,
              edited=edited)
    return final


def _amendment_reason(reason: str) -> str:
    """The reason for an amendment, checked: non-empty, bounded, fit for DICOM text."""
    try:
        cleaned = clean_text(reason if isinstance(reason, str) else "", "the reason")
    except (TypeError, ValueError) as exc:
        raise SignoffError(str(exc)) from exc
    if not cleaned:
        raise SignoffError("give a reason for the amendment")
    if len(cleaned) > MAX_REASON_LENGTH:
        raise SignoffError(f"the reason is longer than {MAX_REASON_LENGTH} characters")
    return cleaned


def amend_report(
    session: Session,
    store: InstanceStore,
    report_id: int,
    user: User,
    findings: str,
    impression: str,
    *,
    reason: str,
    now: dt.datetime | None = None,
    destinations: Iterable[Destination] = (),
    language: str | None = None,
) -> Report:
    """Amend the current final report: a new FINAL version; the old one becomes AMENDED.

    Parameters are those of :func:`sign_report`, with ``report_id`` the current FINAL
    report of the study, and ``reason``: why the report is amended (required, at most
    :data:`MAX_REASON_LENGTH` characters). It is stored with the new version, written into
    its SR ("Reason for amendment") and into the ``report_amended`` audit event.

    Returns
    -------
    Report
        The new FINAL report; its ``predecessor_id`` is the report it amends.

    Raises
    ------
    NotPermitted, ReportNotFound
        As for :func:`sign_report`.
    AlreadySigned
        If the report was already amended (it is no longer the current version).
    EvidenceMismatch
        If a stored image no longer holds what the current report was signed on.
    SignoffError
        If the report is not a final report, the amendment changes nothing, or the reason
        is empty, too long or holds characters DICOM text cannot carry.
    """
    now = now or utcnow()
    _check_radiologist(user)
    reason = _amendment_reason(reason)
    current = _locked_report(session, report_id)
    if current.state == ReportState.AMENDED or _successor_id(session, current.id) is not None:
        raise AlreadySigned("this report was already amended; amend the newest version")
    if current.state != ReportState.FINAL:
        raise SignoffError("only a signed report can be amended; sign the draft instead")
    amended = _write_version(session, store, current, user, findings, impression, now,
                             amendment=True, amendment_reason=reason,
                             language=user.language or language)
    queue_exports(session, amended, destinations, now=now)
    _audit(session, now, user, "report_amended", amended, {
        "amends_report_id": current.id, "sop_instance_uid": amended.sop_instance_uid,
        "reason": reason,
    })
    session.flush()
    log_event(logger, logging.INFO, "report_amended", report_id=amended.id,
              amends_report_id=current.id, study_id=amended.study_id, user_id=user.id)
    return amended


def reject_draft(
    session: Session,
    report_id: int,
    user: User,
    reason: str,
    *,
    now: dt.datetime | None = None,
    store: InstanceStore | None = None,
) -> Report:
    """Record that a radiologist rejected a draft as unusable, with the reason.

    The study stays DRAFTED (the worklist shows the draft as rejected); a report may still
    be written and signed from it.

    Parameters
    ----------
    session
        The caller's session; flushed, not committed.
    report_id
        The draft.
    user
        The rejecting radiologist.
    reason
        Why (required, at most :data:`MAX_REASON_LENGTH` characters).
    now
        When; the current time by default.
    store
        Holds the draft SR, and the rejection note written for the destinations that
        received the draft; needed when one did (a :class:`SignoffError` otherwise).

    Returns
    -------
    Report
        The draft, with ``rejected_at``, ``rejected_by_id`` and ``rejection_reason`` set.

    Raises
    ------
    NotPermitted, ReportNotFound
        As for :func:`sign_report`.
    AlreadySigned
        If the draft is already signed or rejected.
    SignoffError
        If the report is not a draft or the reason is empty or too long.
    """
    now = now or utcnow()
    _check_radiologist(user)
    reason = (reason or "").strip()
    if not reason:
        raise SignoffError("give a reason for rejecting the draft")
    if len(reason) > MAX_REASON_LENGTH:
        raise SignoffError(f"the reason is longer than {MAX_REASON_LENGTH} characters")
    draft = _locked_report(session, report_id)
    if draft.state != ReportState.DRAFT:
        raise SignoffError("only a draft can be rejected")
    if _successor_id(session, draft.id) is not None:
        raise AlreadySigned("this draft is already signed")
    if draft.rejected_at is not None:
        raise AlreadySigned("this draft is already rejected")
    draft.rejected_at = now
    draft.rejected_by_id = user.id
    draft.rejection_reason = reason
    _audit(session, now, user, "draft_rejected", draft, {"reason": reason})
    _withdraw_rejected(session, store, draft, now)
    session.flush()
    log_event(logger, logging.INFO, "draft_rejected", report_id=draft.id,
              study_id=draft.study_id, user_id=user.id)
    return draft


def _withdraw_rejected(session: Session, store: InstanceStore | None, draft: Report,
                       now: dt.datetime) -> None:
    try:
        withdraw_draft(session, store, draft, RejectionCause.REJECTED, now=now)
    except ValueError as exc:
        raise SignoffError(f"the draft cannot be withdrawn from the destinations: {exc}") \
            from exc


__all__ = [
    "FINAL_SERIES_NUMBER",
    "MAX_REASON_LENGTH",
    "AlreadySigned",
    "ConfirmationRequired",
    "EvidenceMismatch",
    "NotPermitted",
    "ReportNotFound",
    "SignoffError",
    "amend_report",
    "final_series_uid",
    "reject_draft",
    "sign_report",
    "verifier_of",
]
