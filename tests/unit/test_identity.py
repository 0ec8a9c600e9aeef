"""Patient identity agreement between a study and an arriving instance."""

from __future__ import annotations

import pytest

from node.dicom.identity import identity_conflicts

STUDY = {"patient_id": "P-1", "issuer_of_patient_id": "HOSP-A",
         "patient_name": "DOE^JANE", "patient_birth_date": "19600101"}


@pytest.mark.parametrize(("incoming", "expected"), [
    (STUDY, []),
    ({**STUDY, "patient_name": "doe^jane^^"}, []),
    ({**STUDY, "patient_name": "DOE^JANE=", "patient_birth_date": None}, []),
    ({**STUDY, "issuer_of_patient_id": None}, []),
    ({**STUDY, "patient_id": "P-2"}, ["PatientID"]),
    ({**STUDY, "patient_id": None}, ["PatientID"]),
    ({**STUDY, "issuer_of_patient_id": "HOSP-B"}, ["IssuerOfPatientID"]),
    ({**STUDY, "patient_name": "ROE^JOHN"}, ["PatientName"]),
    ({**STUDY, "patient_birth_date": "19700101"}, ["PatientBirthDate"]),
    ({"patient_id": "P-9", "issuer_of_patient_id": "X", "patient_name": "A^B",
      "patient_birth_date": "20000101"},
     ["PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate"]),
])
def test_identity_conflicts(incoming: dict[str, str | None], expected: list[str]) -> None:
    """PatientID must be equal; the other facts conflict only when both are present."""
    assert identity_conflicts(STUDY, incoming) == expected


def test_a_study_without_patient_id_accepts_only_instances_without_one() -> None:
    """No PatientID on either side agrees; a PatientID arriving later does not."""
    bare = {**STUDY, "patient_id": None}
    assert identity_conflicts(bare, {**STUDY, "patient_id": ""}) == []
    assert identity_conflicts(bare, STUDY) == ["PatientID"]
