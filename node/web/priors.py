"""The patient's other studies on this node, for the study page.

A prior is a study with the same Patient ID and the same Issuer of Patient ID (both absent
counts as the same issuer); a study without a Patient ID has no priors. Priors are listed
newest first (study date and time, then arrival). Only a signed report's text is shown:
the current FINAL version (an amendment when there is one); a study with only an AI draft
says so without its text.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db.models import Report, Study
from node.states import ReportState, StudyState


@dataclass(frozen=True)
class PriorStudy:
    """One prior study and what may be shown of its report.

    Attributes
    ----------
    report_state
        ``"signed"``, ``"amended"`` (signed, then amended), ``"draft"`` (an unsigned AI
        draft, text not shown) or ``"none"``.
    findings, impression
        The signed text; empty unless signed.
    """

    study_id: int
    study_date: str | None
    study_time: str | None
    description: str | None
    accession_number: str | None
    state: StudyState
    report_state: str
    findings: str
    impression: str
    signed_at: dt.datetime | None


def _issuer(value: str | None) -> str | None:
    return value.strip() or None if value else None


def _sort_key(study: Study) -> tuple[str, str, dt.datetime]:
    return (study.study_date or "", study.study_time or "", study.first_received_at)


def prior_studies(session: Session, study: Study) -> list[PriorStudy]:
    """The patient's other studies, newest first, with their signed report text.

    Parameters
    ----------
    session
        A read session.
    study
        The study on screen.
    """
    patient_id = (study.patient_id or "").strip()
    if not patient_id:
        return []
    issuer = _issuer(study.issuer_of_patient_id)
    candidates = [s for s in session.scalars(
        select(Study).where(Study.patient_id == study.patient_id, Study.id != study.id))
        if _issuer(s.issuer_of_patient_id) == issuer]
    candidates.sort(key=_sort_key, reverse=True)
    reports: dict[int, list[Report]] = defaultdict(list)
    if candidates:
        for report in session.scalars(select(Report).where(
                Report.study_id.in_([s.id for s in candidates])).order_by(Report.id)):
            reports[report.study_id].append(report)
    priors: list[PriorStudy] = []
    for prior in candidates:
        versions = reports.get(prior.id, [])
        final = next((r for r in reversed(versions) if r.state == ReportState.FINAL), None)
        if final is not None:
            amended = any(r.state == ReportState.AMENDED for r in versions)
            state, findings, impression = ("amended" if amended else "signed",
                                           final.findings, final.impression)
        else:
            state = "draft" if any(r.state == ReportState.DRAFT for r in versions) else "none"
            findings = impression = ""
        priors.append(PriorStudy(
            prior.id, prior.study_date, prior.study_time, prior.study_description,
            prior.accession_number, prior.state, state, findings, impression,
            final.signed_at if final is not None else None))
    return priors


__all__ = ["PriorStudy", "prior_studies"]
