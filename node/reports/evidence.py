"""The evidence behind a signed report: what the radiologist saw, and whether it changed.

At sign-off (and at each amendment) the SHA-256 of every stored image instance of the
study is recorded with the new version (``reports.signed_evidence``: SOP Instance UID to
digest), after checking that the files on disk still hold those digests. Serving the
study page, an image of the study, WADO-RS, C-GET and C-MOVE, and amending check the
stored files against the current signed version's record; a mismatch raises
:class:`EvidenceChanged`, which the callers refuse loudly and audit
(``signed_evidence_mismatch``). Instances the retention clean-up
removed on purpose are not checked (their rows say when they went).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db.models import AuditEvent, Instance, Report
from node.db.types import utcnow
from node.logs import log_event
from node.states import ReportState
from node.storage import InstanceStore

logger = logging.getLogger(__name__)

_SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
_CHUNK = 1 << 20


class EvidenceChanged(Exception):  # noqa: N818 - reads as the event it reports
    """A stored instance no longer holds what the signed report was signed on."""

    def __init__(self, report_id: int, changed: list[str]) -> None:
        super().__init__(
            f"the images behind the signed report have changed since it was signed "
            f"({len(changed)} instance(s) differ); an admin must investigate")
        self.report_id = report_id
        self.changed = changed


@dataclass(frozen=True)
class _Stored:
    sop_instance_uid: str
    path: str
    sha256: str
    purged: bool


def file_sha256(store: InstanceStore, relative_path: str) -> str | None:
    """Return the SHA-256 of a stored file, or ``None`` when it is missing."""
    digest = hashlib.sha256()
    try:
        with store.absolute(relative_path).open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def _image_instances(session: Session, study_id: int) -> list[_Stored]:
    rows = session.execute(
        select(Instance.sop_instance_uid, Instance.path, Instance.sha256,
               Instance.purged_at, Instance.sop_class_uid)
        .where(Instance.study_id == study_id).order_by(Instance.id)
    ).all()
    return [_Stored(uid, path, sha, purged is not None)
            for uid, path, sha, purged, sop_class in rows
            if not sop_class.startswith(_SR_SOP_CLASS_PREFIX)]


def current_signed(session: Session, study_id: int) -> Report | None:
    """The study's current signed version (FINAL), or ``None`` before sign-off."""
    return session.scalar(
        select(Report).where(Report.study_id == study_id, Report.state == ReportState.FINAL)
        .order_by(Report.id.desc()).limit(1))


def record_evidence(session: Session, store: InstanceStore, study_id: int) -> dict[str, str]:
    """The digests of the study's stored images, checked against their files.

    Returns
    -------
    dict
        SOP Instance UID to SHA-256, for ``reports.signed_evidence``.

    Raises
    ------
    EvidenceChanged
        If a stored file no longer matches its recorded digest (``report_id`` is 0).
    """
    evidence: dict[str, str] = {}
    changed: list[str] = []
    for item in _image_instances(session, study_id):
        if item.purged:
            continue
        if file_sha256(store, item.path) != item.sha256:
            changed.append(item.sop_instance_uid)
        evidence[item.sop_instance_uid] = item.sha256
    if changed:
        raise EvidenceChanged(0, changed)
    return evidence


def verify_evidence(session: Session, store: InstanceStore, study_id: int,
                    sop_instance_uids: set[str] | None = None) -> None:
    """Check the stored files behind the study's current signed report.

    Parameters
    ----------
    session
        A session (read only).
    store
        Where the instance files are.
    study_id
        The study.
    sop_instance_uids
        Check only these instances (e.g. the one image being served); all when ``None``.

    Raises
    ------
    EvidenceChanged
        If a signed instance's row or file no longer holds the signed digest.
    """
    report = current_signed(session, study_id)
    if report is None or not report.signed_evidence:
        return
    stored = {item.sop_instance_uid: item for item in _image_instances(session, study_id)}
    changed: list[str] = []
    for uid, signed_digest in report.signed_evidence.items():
        if sop_instance_uids is not None and uid not in sop_instance_uids:
            continue
        item = stored.get(uid)
        if item is None:
            changed.append(uid)
        elif item.purged:
            continue
        elif item.sha256 != signed_digest or file_sha256(store, item.path) != signed_digest:
            changed.append(uid)
    if changed:
        raise EvidenceChanged(report.id, changed)


def changed_behind_signed_reports(
    session: Session, store: InstanceStore, wanted: Mapping[int, set[str]]
) -> list[tuple[int, EvidenceChanged]]:
    """Check the instances about to be served, study by study.

    Parameters
    ----------
    session
        A session (read only).
    store
        Where the instance files are.
    wanted
        Study row id to the SOP Instance UIDs of the images to be served.

    Returns
    -------
    list of (int, EvidenceChanged)
        Each study whose signed evidence no longer matches, with the instances that differ;
        empty when everything may be served.
    """
    changed: list[tuple[int, EvidenceChanged]] = []
    for study_id, sop_instance_uids in wanted.items():
        try:
            verify_evidence(session, store, study_id, sop_instance_uids)
        except EvidenceChanged as error:
            changed.append((study_id, error))
    return changed


def audit_mismatch(session: Session, study_id: int, error: EvidenceChanged, *, actor: str,
                   user_id: int | None, during: str) -> None:
    """Record a mismatch in the audit trail (the caller commits, in its own transaction)
    and as an ERROR log event (ids and counts only)."""
    session.add(AuditEvent(
        at=utcnow(), actor=actor, user_id=user_id, action="signed_evidence_mismatch",
        object_type="report", object_id=str(error.report_id) if error.report_id else None,
        study_id=study_id, details={"during": during, "sop_instance_uids": error.changed},
    ))
    log_event(logger, logging.ERROR, "signed_evidence_mismatch", study_id=study_id,
              report_id=error.report_id, instances=len(error.changed), during=during)
