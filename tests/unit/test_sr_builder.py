"""The SR builder: template and code tables, value checks, draft / final / amended reports."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import cast

import pydicom
import pydicom.sr._concepts_dict as ps316
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage, generate_uid

from node.reports import (
    ModelProvenance,
    ReportContent,
    Verifier,
    build_draft_sr,
    build_final_sr,
    load_report_template,
    read_report_content,
    read_sr,
    sr_to_bytes,
)
from node.reports.sr_content import concept_key
from tests.dicom_factory import make_cxr_dataset

CHEXPERT = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
SIGNED_AT = dt.datetime(2024, 5, 17, 14, 5, 0, tzinfo=dt.UTC)


def cxr_pair(**kwargs: object) -> list[Dataset]:
    """A PA and a lateral view of one study (small images)."""
    study, series = generate_uid(), generate_uid()
    common = {"study_uid": study, "series_uid": series, "rows": 32, "cols": 32, **kwargs}
    return [
        make_cxr_dataset(view_position="PA", instance_number=1, **common),  # type: ignore[arg-type]
        make_cxr_dataset(view_position="LL", instance_number=2, **common),  # type: ignore[arg-type]
    ]


def model(synthetic: bool = False) -> ModelProvenance:
    return ModelProvenance(name="radnode-cxr", version="2.1.0", manufacturer="radnode",
                           device_uid="1.2.826.0.1.3680043.8.498.1", synthetic=synthetic)


def verifier() -> Verifier:
    return Verifier(name="Dupont^Marie", organization="Hôpital Saint-Luc",
                    identifier="mdupont", login_name="mdupont")


def content(**overrides: object) -> ReportContent:
    values: dict[str, object] = {
        "findings": "Small left pleural effusion. No pneumothorax.",
        "impression": "Small left pleural effusion.",
        "observations": {"Pleural Effusion": "present", "Pneumothorax": "absent"},
        "urgent": False,
        "flags": (),
    }
    values.update(overrides)
    return ReportContent(**values)  # type: ignore[arg-type]


def draft(evidence: Sequence[Dataset], body: ReportContent | None = None,
          provenance: ModelProvenance | None = None) -> Dataset:
    return build_draft_sr(
        evidence, body or content(), provenance or model(),
        series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(),
        series_number=900, instance_number=1,
    )


def final(evidence: Sequence[Dataset], predecessor: Dataset, *, amendment: bool = False,
          at: dt.datetime = SIGNED_AT, body: ReportContent | None = None) -> Dataset:
    return build_final_sr(
        evidence, body or content(), model(), predecessor, verifier(), at,
        amendment=amendment, series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(), series_number=901, instance_number=1,
        amendment_reason="Follow-up advice added." if amendment else None,
    )


def section(sr: Dataset, code: str) -> Dataset | None:
    found = [i for i in root_items(sr, code) if i.ValueType == "CONTAINER"]
    return found[0] if found else None


def root_items(sr: Dataset, code: str) -> list[Dataset]:
    return [i for i in sr.ContentSequence if concept_key(i.ConceptNameCodeSequence[0])[1] == code]


# --- template and code tables -------------------------------------------------------------


def test_template_lists_the_fourteen_chexpert_observations() -> None:
    assert load_report_template().observation_names == CHEXPERT


def test_codes_agree_with_dicom_part16_where_it_knows_them() -> None:
    known: dict[tuple[str, str], set[str]] = {}
    concepts = cast(dict[str, dict[str, dict[str, tuple[str, list[int]]]]], ps316.concepts)
    for scheme in ("SCT", "DCM", "LN"):
        for entries in concepts[scheme].values():
            for value, (meaning, _cids) in entries.items():
                known.setdefault((scheme, value), set()).add(meaning)
    checked = [code for code in load_report_template().all_codes() if code.key in known]
    for code in checked:
        assert code.meaning in known[code.key], code
    # Every standard code but the SNOMED CT disorders PS3.16 does not list.
    unlisted = {c.value for c in load_report_template().all_codes()
                if c.scheme != "99RADNODE" and c.key not in known}
    assert unlisted == {"en-US", "8186001", "95436008", "233604007", "46621007", "125605004"}


def test_presence_codes_are_dicom_cid_240() -> None:
    presence = {p: c.key for p, c in load_report_template().presence.items()}
    assert presence == {
        "present": ("SCT", codes.cid240.Present.value),
        "absent": ("SCT", codes.cid240.Absent.value),
        "uncertain": ("SCT", codes.cid240.Undetermined.value),
    }


def test_section_codes_are_those_of_pydicom() -> None:
    c = load_report_template().codes
    assert c["findings_section"].key == ("DCM", codes.DCM.Findings.value)
    assert c["impressions_section"].meaning == codes.DCM.Impressions.meaning
    assert c["root"].key == ("LN", codes.LN.DiagnosticImagingReport.value)
    assert c["contributing_purpose"].key == ("DCM", codes.DCM.ProcessingEquipment.value)


def test_every_local_code_fits_a_short_code_value() -> None:
    for code in load_report_template().all_codes():
        assert len(code.value) <= 16, code


# --- value checks ------------------------------------------------------------------------


def test_unknown_observation_is_refused_with_the_valid_names() -> None:
    with pytest.raises(ValueError, match="Pleural Effusion") as info:
        content(observations={"Pleural Efusion": "present"})
    assert "Support Devices" in str(info.value)


def test_unknown_presence_is_refused() -> None:
    with pytest.raises(ValueError, match="present, absent, uncertain"):
        content(observations={"Edema": "probable"})


def test_observation_names_are_folded_and_ordered_as_the_table() -> None:
    body = content(observations={"support_devices": "present", "pleural-effusion": "uncertain"})
    assert list(body.observations.items()) == [
        ("Pleural Effusion", "uncertain"), ("Support Devices", "present"),
    ]
    with pytest.raises(ValueError, match="twice"):
        content(observations={"Edema": "present", "edema": "absent"})


def test_text_is_normalised_and_control_characters_refused() -> None:
    body = content(findings="\tLine one\twith tab.\nLine two.   ", impression="")
    assert body.findings == "Line one with tab.\nLine two."
    with pytest.raises(ValueError, match="control character"):
        content(findings="bad \x00 byte")
    with pytest.raises(ValueError, match="UTF-8"):
        content(impression="lone \ud800 surrogate")
    with pytest.raises(ValueError, match="findings or an impression"):
        content(findings="  ", impression="")


def test_flags_are_checked() -> None:
    with pytest.raises(TypeError):
        content(flags="pneumothorax")
    with pytest.raises(ValueError, match="empty"):
        content(flags=("pneumothorax", " "))
    assert content(flags=["pneumothorax"]).flags == ("pneumothorax",)


def test_model_and_verifier_are_checked() -> None:
    with pytest.raises(ValueError, match="UID"):
        dataclasses.replace(model(), device_uid="1.2.abc")
    with pytest.raises(ValueError, match="64"):
        dataclasses.replace(model(), name="x" * 65)
    with pytest.raises(ValueError, match="Family\\^Given"):
        Verifier(name="Marie Dupont", organization="H", identifier="mdupont")
    with pytest.raises(ValueError):
        Verifier(name="Dupont^Marie", organization="H", identifier="md\\upont")
    assert verifier().identification_code().meaning == "Marie Dupont"


# --- draft -------------------------------------------------------------------------------


def test_draft_is_an_unverified_partial_preliminary_comprehensive_sr() -> None:
    evidence = cxr_pair()
    sr = draft(evidence)
    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "PARTIAL", "UNVERIFIED", "PRELIMINARY")
    assert sr.SeriesDescription == "AI DRAFT - UNVERIFIED - NOT FOR DIAGNOSTIC USE"
    assert "VerifyingObserverSequence" not in sr
    assert "PredecessorDocumentsSequence" not in sr
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert sr.Modality == "SR"
    assert "PixelData" not in sr


def test_draft_takes_patient_and_study_from_evidence_in_its_own_series() -> None:
    evidence = cxr_pair()
    sr = draft(evidence)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "AccessionNumber", "StudyDate", "StudyTime", "StudyID"):
        assert sr[keyword].value == evidence[0][keyword].value, keyword
    assert sr.SeriesInstanceUID != evidence[0].SeriesInstanceUID
    referenced = {
        sop.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in evidence}


def test_draft_names_the_model_as_device_observer_algorithm_and_equipment() -> None:
    sr = draft(cxr_pair())
    [device_uid] = root_items(sr, "121012")
    assert model().device_uid == device_uid.UID
    assert root_items(sr, "121005")[0].ConceptCodeSequence[0].CodeValue == "121007"
    assert root_items(sr, "111001")[0].TextValue == "radnode-cxr"
    assert root_items(sr, "111003")[0].TextValue == "2.1.0"
    [equipment] = [e for e in sr.ContributingEquipmentSequence if "DeviceUID" in e]
    assert equipment.DeviceUID == model().device_uid
    assert equipment.Manufacturer == "radnode"
    assert equipment.ManufacturerModelName == "radnode-cxr"
    assert equipment.SoftwareVersions == "2.1.0"
    assert concept_key(equipment.PurposeOfReferenceCodeSequence[0]) == ("DCM", "109102")


def test_draft_content_tree_has_language_sections_and_coded_findings() -> None:
    sr = draft(cxr_pair(), content(urgent=True, flags=("pneumothorax",)))
    [language] = root_items(sr, "121049")
    assert concept_key(language.ConceptCodeSequence[0]) == ("RFC5646", "en-US")
    assert root_items(sr, "121106")[0].TextValue.startswith("Unverified draft")
    findings = section(sr, "121070")
    assert findings is not None and findings.ContentSequence[0].TextValue.startswith("Small")
    coded = section(sr, "CXROBS")
    assert coded is not None
    pairs = [(concept_key(i.ConceptNameCodeSequence[0]), concept_key(i.ConceptCodeSequence[0]))
             for i in coded.ContentSequence]
    assert pairs == [(("SCT", "36118008"), ("SCT", "272519000")),
                     (("SCT", "60046008"), ("SCT", "52101004"))]
    assert read_report_content(sr) == content(urgent=True, flags=("pneumothorax",))
    schemes = [i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence]
    assert schemes == ["99RADNODE"]


def test_draft_without_coded_findings_or_impression_leaves_the_sections_out() -> None:
    sr = draft(cxr_pair(), content(observations={}, impression=""))
    assert section(sr, "CXROBS") is None
    assert section(sr, "121072") is None
    assert section(sr, "121070") is not None
    assert read_report_content(sr).observations == {}


def test_synthetic_model_draft_says_so() -> None:
    sr = draft(cxr_pair(), provenance=model(synthetic=True))
    assert sr.SeriesDescription.startswith("SYNTHETIC AI DRAFT")
    notices = [i.TextValue for i in root_items(sr, "121106")]
    assert any("synthetic" in n for n in notices)


def test_evidence_is_checked() -> None:
    evidence = cxr_pair()
    with pytest.raises(ValueError, match="non-empty"):
        draft([])
    with pytest.raises(ValueError, match="one study"):
        draft([evidence[0], cxr_pair()[1]])
    with pytest.raises(ValueError, match="more than once"):
        draft([evidence[0], evidence[0]])
    with pytest.raises(ValueError, match="own series"):
        build_draft_sr(evidence, content(), model(),
                       series_instance_uid=evidence[0].SeriesInstanceUID,
                       sop_instance_uid=generate_uid(), series_number=9, instance_number=1)
    with pytest.raises(ValueError, match="not a valid DICOM UID"):
        build_draft_sr(evidence, content(), model(), series_instance_uid="1.2.x",
                       sop_instance_uid=generate_uid(), series_number=9, instance_number=1)


def test_odd_header_values_do_not_stop_a_draft_and_evidence_is_left_alone() -> None:
    evidence = cxr_pair()
    for ds in evidence:
        ds.PatientSex = "U"
        del ds.PatientBirthDate
    sr = draft(evidence)
    assert sr.PatientSex in ("", None)
    assert sr.PatientBirthDate in ("", None)
    assert evidence[0].PatientSex == "U"


# --- final and amendment -------------------------------------------------------------------


def test_final_is_verified_complete_and_points_at_the_draft() -> None:
    evidence = cxr_pair()
    predecessor = draft(evidence)
    sr = final(evidence, predecessor)
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE", "VERIFIED", "FINAL")
    [observer] = sr.VerifyingObserverSequence
    assert observer.VerifyingObserverName == "Dupont^Marie"
    assert observer.VerifyingOrganization == "Hôpital Saint-Luc"
    assert observer.VerificationDateTime == SIGNED_AT
    [code] = observer.VerifyingObserverIdentificationCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("mdupont", "99RADNODEUSER")
    [pre_study] = sr.PredecessorDocumentsSequence
    [pre_series] = pre_study.ReferencedSeriesSequence
    assert pre_series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        predecessor.SOPInstanceUID
    assert pre_series.SeriesInstanceUID == predecessor.SeriesInstanceUID
    assert root_items(sr, "121008")[0].PersonName == "Dupont^Marie"
    assert model().device_uid == root_items(sr, "121012")[0].UID
    assert not any(i.TextValue.startswith("Unverified") for i in root_items(sr, "121106"))
    assert sr.SeriesDescription == "CHEST XR REPORT - VERIFIED"


def test_final_keeps_the_model_contribution_time_of_the_draft() -> None:
    evidence = cxr_pair()
    predecessor = draft(evidence)
    sr = final(evidence, predecessor)
    times = [e.ContributionDateTime for seq in (predecessor, sr)
             for e in seq.ContributingEquipmentSequence if "DeviceUID" in e]
    assert times[0] == times[1]


def test_amendment_points_at_the_previous_final_and_says_so() -> None:
    evidence = cxr_pair()
    signed = final(evidence, draft(evidence))
    amended = final(evidence, signed, amendment=True, at=SIGNED_AT + dt.timedelta(hours=2),
                    body=content(impression="Small left pleural effusion; follow up."))
    sop = amended.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert sop.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == signed.SOPInstanceUID
    assert amended.VerificationFlag == "VERIFIED"
    notices = [i.TextValue for i in root_items(amended, "121106")]
    assert any("2024-05-17 14:05" in n for n in notices)
    assert [i.TextValue for i in root_items(amended, "AMENDREASON")] == [
        "Follow-up advice added."]
    assert root_items(signed, "AMENDREASON") == []
    assert read_report_content(amended).impression == "Small left pleural effusion; follow up."


def test_predecessor_must_match_the_kind_of_signature() -> None:
    evidence = cxr_pair()
    predecessor = draft(evidence)
    signed = final(evidence, predecessor)
    with pytest.raises(ValueError, match="verified report"):
        final(evidence, predecessor, amendment=True)
    with pytest.raises(ValueError, match="amendment"):
        final(evidence, signed)
    with pytest.raises(ValueError, match="after"):
        final(evidence, signed, amendment=True, at=SIGNED_AT)
    with pytest.raises(ValueError, match="another study"):
        final(cxr_pair(), predecessor)
    with pytest.raises(ValueError, match="SR document"):
        final(evidence, evidence[0])


def test_round_trip_through_part10_bytes() -> None:
    evidence = cxr_pair(patient_name="Müller^Zoë")
    body = content(findings="Épanchement pleural gauche.\r\nPas de pneumothorax. 胸水",
                   urgent=True, flags=("pleural effusion", "Zürich"))
    data = sr_to_bytes(final(evidence, draft(evidence, body), body=body))
    assert data[128:132] == b"DICM"
    sr = read_sr(data)
    assert read_report_content(sr) == body
    assert str(sr.PatientName) == "Müller^Zoë"
    plain = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    assert read_report_content(plain) == body


def test_read_report_content_refuses_other_documents() -> None:
    sr = draft(cxr_pair())
    sr.ConceptNameCodeSequence[0].CodeValue = "11528-7"
    with pytest.raises(ValueError, match="not a radnode"):
        read_report_content(sr)
