"""Drafting a study end to end with a tiny trained bundle on real DICOM files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from tests.dicom_factory import (
    compress_with_dcmtk,
    corrupt_pixel_stream,
    make_cxr_dataset,
    write_dataset,
)
from tests.unit.inference.synth_support import DEMO_BUNDLE, tiny_synth_bundle
from workers.inference.bundle import LoadedBundle, load_bundle
from workers.inference.drafting import (
    DraftResult,
    NoFrontalImageError,
    draft_study,
    indication_from_headers,
    split_report_sections,
)
from workers.inference.preprocess import ImageDecodeError
from workers.inference.synth.phantom import Effusion, PhantomLabels, render_phantom

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle() -> LoadedBundle:
    return load_bundle(tiny_synth_bundle())


def _study(tmp_path: Path, *views: str, reason: str | None = "Shortness of breath.") -> list[Path]:
    study_uid = "1.2.826.0.1.3680043.10.1147.99.1"
    paths = []
    for number, view in enumerate(views, start=1):
        ds = make_cxr_dataset(
            study_uid=study_uid,
            view_position=view,
            bits=12,
            windows=[(2048.0, 4096.0)],
            reason_for_exam=reason,
            instance_number=number,
            seed=number,
        )
        paths.append(write_dataset(ds, tmp_path / f"{number:02d}_{view}.dcm"))
    return paths


def test_draft_picks_the_frontal_image_and_reports_everything(
    bundle: LoadedBundle, tmp_path: Path
) -> None:
    lateral, frontal = _study(tmp_path, "LL", "PA")
    result = draft_study([lateral, frontal], bundle)
    assert isinstance(result, DraftResult)
    assert result.image_used.path == str(frontal)
    assert result.image_used.view == "PA" and result.image_used.view_source == "ViewPosition"
    assert "lateral" in result.image_used.reason
    assert result.indication == "Shortness of breath."
    assert result.indication_source == "ReasonForTheRequestedProcedure"
    assert result.model.architecture == "radnode-synth" and result.model.synthetic
    findings, impression = split_report_sections(result.raw_text, "findings_impression")
    assert (result.findings, result.impression) == (findings, impression)
    t = result.timings
    assert min(t.decode_ms, t.preprocess_ms, t.encode_ms, t.generate_ms) >= 0
    assert t.total_ms >= t.decode_ms + t.preprocess_ms + t.encode_ms + t.generate_ms
    assert result.tokens.prompt > bundle.manifest.num_image_tokens
    assert 0 < result.tokens.generated <= bundle.manifest.generation.max_new_tokens
    payload = json.loads(json.dumps(result.to_json_dict()))
    assert {"findings", "impression", "image_used", "model", "timings", "tokens"} <= set(payload)
    assert "TEST^PATIENT" not in json.dumps(payload) and "TEST-0001" not in json.dumps(payload)


def test_greedy_drafts_are_reproducible_and_indication_can_be_overridden(
    bundle: LoadedBundle, tmp_path: Path
) -> None:
    paths = _study(tmp_path, "PA")
    first = draft_study(paths, bundle)
    again = draft_study(paths, bundle)
    assert first.raw_text == again.raw_text
    overridden = draft_study(paths, bundle, indication="Fever.")
    assert overridden.indication == "Fever." and overridden.indication_source == "argument"
    padded = draft_study(paths, bundle, indication=" \tFever.\r\n ")
    assert padded.indication == "Fever." and padded.indication_source == "argument"
    assert padded.tokens.prompt == overridden.tokens.prompt
    assert padded.raw_text == overridden.raw_text
    none = draft_study(paths, bundle, indication="")
    assert none.indication is None and none.indication_source is None
    assert none.tokens.prompt < first.tokens.prompt


@pytest.mark.dcmtk
@pytest.mark.usefixtures("dcmtk_installed")
def test_compressed_input_drafts_like_uncompressed(bundle: LoadedBundle, tmp_path: Path) -> None:
    (plain,) = _study(tmp_path, "PA")
    jls = compress_with_dcmtk(plain, tmp_path / "jls.dcm", "jpegls_lossless")
    assert draft_study([jls], bundle).raw_text == draft_study([plain], bundle).raw_text
    rle = compress_with_dcmtk(plain, tmp_path / "rle.dcm", "rle")
    assert draft_study([rle], bundle).image_used.display["transfer_syntax_name"] == "RLE Lossless"
    broken = corrupt_pixel_stream(jls, tmp_path / "broken.dcm")
    with pytest.raises(ImageDecodeError, match="JPEG-LS"):
        draft_study([broken], bundle)


def test_lateral_only_study_is_refused(bundle: LoadedBundle, tmp_path: Path) -> None:
    paths = _study(tmp_path, "LL", "RL")
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    with pytest.raises(NoFrontalImageError, match="lateral"):
        draft_study([*paths, junk], bundle)


def test_indication_lookup_order() -> None:
    plain = Dataset()
    requested = Dataset()
    requested.RequestedProcedureDescription = "XR CHEST PA AND LATERAL"
    item = Dataset()
    item.ReasonForTheRequestedProcedure = "Fever, cough"
    with_sequence = Dataset()
    with_sequence.RequestAttributesSequence = DicomSequence([item])
    assert indication_from_headers([plain]) == (None, None)
    assert indication_from_headers([requested]) == (
        "XR CHEST PA AND LATERAL",
        "RequestedProcedureDescription",
    )
    assert indication_from_headers([requested, with_sequence]) == (
        "Fever, cough",
        "RequestAttributesSequence.ReasonForTheRequestedProcedure",
    )


@pytest.mark.parametrize(
    ("text", "sections", "expected"),
    [
        (
            "FINDINGS: Lungs clear. IMPRESSION: Normal.",
            "findings_impression",
            ("Lungs clear.", "Normal."),
        ),
        ("Lungs clear. Impression: Normal.", "findings_impression", ("Lungs clear.", "Normal.")),
        ("FINDINGS: Lungs clear.", "findings_impression", ("Lungs clear.", "")),
        ("The lungs are clear.", "findings", ("The lungs are clear.", "")),
        ("FINDINGS: The lungs are clear.", "findings", ("The lungs are clear.", "")),
    ],
)
def test_split_report_sections(text: str, sections: str, expected: tuple[str, str]) -> None:
    assert split_report_sections(text, sections) == expected


@pytest.mark.usefixtures("demo_bundle_built")
def test_demo_bundle_drafts_the_finding_of_a_phantom_study(tmp_path: Path) -> None:
    demo = load_bundle(DEMO_BUNDLE)
    labels = PhantomLabels(ctr=0.64, effusion=Effusion("right", "large"))
    phantom = render_phantom(labels, size=384, seed=123)
    ds = make_cxr_dataset(
        image=phantom.pixels.astype(np.uint16), bits=12, windows=[(2048.0, 4096.0)]
    )
    result = draft_study([write_dataset(ds, tmp_path / "cxr.dcm")], demo)
    text = result.findings.lower()
    assert "effusion" in text and "right" in text
    assert "enlarged" in text or "cardiomegaly" in text
    assert result.impression


def test_synthetic_demo_studies_draft_from_their_frontal_view(
    bundle: LoadedBundle, tmp_path: Path
) -> None:
    from workers.inference.synth.studies import write_demo_studies

    studies = write_demo_studies(tmp_path, count=2, seed=3, size=160)
    again = write_demo_studies(tmp_path / "again", count=2, seed=3, size=160)
    assert [s.study_uid for s in studies] == [s.study_uid for s in again]
    assert json.loads((tmp_path / "truth.json").read_text())[0]["accession"] == studies[0].accession
    for study in studies:
        assert len(study.files) == 2
        result = draft_study(list(reversed(study.files)), bundle)
        assert result.image_used.path == str(study.frontal)
        assert result.image_used.view in ("PA", "AP")
        assert result.indication == study.indication
