"""IHE IOCM rejection notes: a Key Object Selection Document that rejects a draft SR.

When an unverified draft that a destination received is rejected by a radiologist or
superseded by the signed report, the destination is sent a rejection note (IHE RAD TF
IOCM, "Rejection Note Stored"): a KOS in the draft's study whose document title is the
rejection reason and whose Current Requested Procedure Evidence Sequence and content
name the draft SR. An IOCM archive then hides the draft from normal use.

The title is (113001, DCM, "Rejected for Quality Reasons") in both cases: the draft is
withdrawn because it is not fit to be read as a report (unverified, or replaced by the
radiologist's own), which is what IOCM's quality rejection means; the archive may keep
it for the record. (113037, DCM, "Rejected for Patient Safety Reasons") is for content
that must never be shown (a wrong patient or laterality) and leads archives to purge
it, and (113039, DCM, "Data Retention Policy Expired") asks for deletion at the end of
a retention period; neither describes a draft replaced by a verified report. See
docs/conformance.md.
"""

from __future__ import annotations

import enum

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

#: The document title of every rejection note the node writes (CID 7011).
REJECTED_FOR_QUALITY_REASONS = hd.sr.CodedConcept("113001", "DCM",
                                                  "Rejected for Quality Reasons")
#: Series number of the node's rejection notes (drafts are in 9001, finals in 9002).
REJECTION_NOTE_SERIES_NUMBER = 9003
MANUFACTURER = "radnode"


class RejectionCause(enum.Enum):
    """Why a draft SR is withdrawn (the note's Key Object Description)."""

    REJECTED = "Unverified draft report rejected by a radiologist"
    SUPERSEDED = "Unverified draft report superseded by the signed report"


def rejection_note_series_uid(study_uid: str) -> str:
    """Series Instance UID of the rejection notes of ``study_uid`` (one series per study)."""
    return str(generate_uid(entropy_srcs=[study_uid, "radnode-rejection-notes"]))


def build_rejection_note(draft_sr: Dataset, cause: RejectionCause, *,
                         instance_number: int = 1) -> Dataset:
    """Write the KOS that rejects ``draft_sr`` (a rejection note of IHE IOCM).

    Parameters
    ----------
    draft_sr
        The rejected draft SR: its patient and study become the note's, and it is the one
        instance the note references.
    cause
        Rejected or superseded; written as the Key Object Description.
    instance_number
        The note's Instance Number in the study's rejection note series.

    Returns
    -------
    pydicom.dataset.Dataset
        A Key Object Selection Document (Explicit VR Little Endian) with a new SOP Instance
        UID.
    """
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTED_FOR_QUALITY_REASONS,
        referenced_objects=[draft_sr],
        description=cause.value,
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=[draft_sr],
        content=content,
        series_instance_uid=rejection_note_series_uid(str(draft_sr.StudyInstanceUID)),
        series_number=REJECTION_NOTE_SERIES_NUMBER,
        sop_instance_uid=str(generate_uid()),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
    )


__all__ = [
    "REJECTED_FOR_QUALITY_REASONS",
    "REJECTION_NOTE_SERIES_NUMBER",
    "RejectionCause",
    "build_rejection_note",
    "rejection_note_series_uid",
]
