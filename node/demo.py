"""``radnode demo``: send sample studies to a running node and follow their drafts.

The studies are synthetic chest radiograph phantoms with fictional patients
(:func:`workers.inference.synth.studies.write_demo_studies`), sent over DICOM like
a modality would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]
from sqlalchemy import select

from node.db.models import Report, Study
from node.runtime import NodeServices
from node.states import StudyState

_FINISHED = frozenset({StudyState.DRAFTED, StudyState.SIGNED, StudyState.FAILED,
                       StudyState.IGNORED})


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
    """Return (study UID, draft text) for drafted studies.

    The text is the findings and impression; a degenerate draft says so first, an urgent
    study ends with its flags.
    """
    with services.database.sessions() as session:
        rows = session.execute(
            select(Study.study_instance_uid, Report.findings, Report.impression,
                   Report.degenerate, Report.degeneracy_reasons, Study.urgent,
                   Study.urgent_findings)
            .join(Report, Report.study_id == Study.id)
            .where(Study.study_instance_uid.in_(study_uids))
        )
        summaries = []
        for uid, findings, impression, degenerate, reasons, urgent, flags in rows:
            text = f"FINDINGS: {findings} IMPRESSION: {impression}".strip()
            if degenerate:
                text = f"[DEGENERATE DRAFT: {', '.join(reasons or [])}] {text}"
            if urgent:
                text += f"  [URGENT: {', '.join(flags or [])}]"
            summaries.append((uid, text))
        return summaries
