"""Patient identity of a study, and whether an arriving instance agrees with it.

An instance joins a stored study only when its patient identity agrees with the study's:
PatientID must be equal (a missing PatientID on one side and not the other disagrees);
Issuer of Patient ID, Patient's Name and Patient's Birth Date disagree only when both
sides have a value and the values differ. Names are compared without case and without
trailing empty components (``DOE^JOHN^^`` equals ``Doe^John``).
"""

from __future__ import annotations

from collections.abc import Mapping

#: Identity facts (``studies`` columns) and the attribute each comes from.
IDENTITY_KEYWORDS = {
    "patient_id": "PatientID",
    "issuer_of_patient_id": "IssuerOfPatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
}


def _normal_name(value: str) -> str:
    groups = [group.rstrip("^ ").strip() for group in value.split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups).casefold()


def identity_conflicts(
    study: Mapping[str, str | None], incoming: Mapping[str, str | None]
) -> list[str]:
    """Return the attributes whose values disagree between a study and an instance.

    Parameters
    ----------
    study
        The stored study's identity facts (keys of :data:`IDENTITY_KEYWORDS`).
    incoming
        The arriving instance's facts (same keys).

    Returns
    -------
    list of str
        DICOM keywords of the attributes that disagree (never their values); empty when
        the instance may join the study.
    """
    conflicts: list[str] = []
    for name, keyword in IDENTITY_KEYWORDS.items():
        mine, theirs = study.get(name), incoming.get(name)
        if name == "patient_id":
            if (mine or None) != (theirs or None):
                conflicts.append(keyword)
            continue
        if not mine or not theirs:
            continue
        if name == "patient_name":
            if _normal_name(mine) != _normal_name(theirs):
                conflicts.append(keyword)
        elif mine.strip() != theirs.strip():
            conflicts.append(keyword)
    return conflicts
