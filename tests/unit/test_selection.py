"""Selection rules: which complete studies are chest radiographs to draft."""

from __future__ import annotations

import pytest

from node.assembly.selection import InstanceFacts, decide, view_of
from node.config import SelectionSettings
from node.states import IgnoreReason

DX = "1.2.840.10008.5.1.4.1.1.1.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
GRAYSCALE_PR = "1.2.840.10008.5.1.4.1.1.11.1"
KEY_OBJECT = "1.2.840.10008.5.1.4.1.1.88.59"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
ECG_WAVEFORM = "1.2.840.10008.5.1.4.1.1.9.1.1"

RULES = SelectionSettings()


def facts(
    *,
    sop_class: str = DX,
    modality: str | None = "DX",
    body_part: str | None = "CHEST",
    view: str | None = "PA",
    description: str | None = None,
    image_type: str | None = "ORIGINAL\\PRIMARY",
    conversion_type: str | None = None,
) -> InstanceFacts:
    """Header facts of one instance (a DX chest PA unless told otherwise)."""
    return InstanceFacts(sop_class, modality, body_part, view, description, image_type,
                         conversion_type)


@pytest.mark.parametrize("modality,sop_class", [("DX", DX), ("CR", CR), ("dx", DX)])
def test_cr_and_dx_chest_frontal_is_drafted(modality: str, sop_class: str) -> None:
    """CR and DX (any case) chest PA images qualify."""
    decision = decide([facts(sop_class=sop_class, modality=modality)], RULES)
    assert decision.draft is True
    assert decision.ignore_reason is None


@pytest.mark.parametrize("modality", ["CT", "MR", "US", "MG", None])
def test_other_modalities_are_ignored(modality: str | None) -> None:
    """Anything but CR/DX is ignored as not radiography."""
    decision = decide([facts(sop_class=CT, modality=modality)], RULES)
    assert decision.draft is False
    assert decision.ignore_reason is IgnoreReason.NOT_RADIOGRAPHY
    assert decision.reason == IgnoreReason.NOT_RADIOGRAPHY.value


@pytest.mark.parametrize("body_part", ["CHEST", "chest", "THORAX", " CHEST "])
def test_chest_body_parts_qualify(body_part: str) -> None:
    """CHEST and THORAX qualify whatever their case or padding."""
    assert decide([facts(body_part=body_part)], RULES).draft is True


@pytest.mark.parametrize("body_part", [None, "", "  "])
def test_absent_body_part_qualifies_by_default(body_part: str | None) -> None:
    """A missing Body Part Examined is accepted (many CR devices leave it out)."""
    assert decide([facts(body_part=body_part)], RULES).draft is True


def test_absent_body_part_can_be_refused() -> None:
    """With allow_missing_body_part off, a missing body part means not chest."""
    rules = SelectionSettings(allow_missing_body_part=False)
    decision = decide([facts(body_part=None)], rules)
    assert decision.draft is False
    assert decision.ignore_reason is IgnoreReason.NOT_CHEST


@pytest.mark.parametrize("body_part", ["HAND", "KNEE", "ABDOMEN"])
def test_other_body_parts_are_ignored(body_part: str) -> None:
    """A radiograph of another body part is ignored as not chest."""
    decision = decide([facts(body_part=body_part)], RULES)
    assert decision.draft is False
    assert decision.ignore_reason is IgnoreReason.NOT_CHEST


@pytest.mark.parametrize(
    ("view", "description", "expected"),
    [
        ("PA", None, "FRONTAL"),
        ("AP", "CHEST LAT", "FRONTAL"),  # ViewPosition decides over the description
        ("ap", None, "FRONTAL"),
        ("LL", None, "LATERAL"),
        ("RL", "CHEST PA", "LATERAL"),
        ("LATERAL", None, "LATERAL"),
        (None, "Chest PA", "FRONTAL"),
        ("", "THORAX AP PORTABLE", "FRONTAL"),
        (None, "chest p-a erect", "FRONTAL"),
        (None, "Chest lateral", "LATERAL"),
        (None, "CHEST LAT", "LATERAL"),
        (None, "Chest 1 view", None),
        (None, None, None),
        ("", "", None),
    ],
)
def test_view_from_view_position_then_series_description(
    view: str | None, description: str | None, expected: str | None
) -> None:
    """ViewPosition decides the view; the series description is the fall-back."""
    assert view_of(facts(view=view, description=description)) == expected


def test_frontal_found_by_series_description_is_drafted() -> None:
    """A chest image without ViewPosition but described as PA is drafted."""
    decision = decide([facts(view=None, description="CHEST PA")], RULES)
    assert decision.draft is True


def test_frontal_plus_lateral_is_drafted_with_both_counted() -> None:
    """A PA + lateral study is drafted; the reason counts the frontal images."""
    decision = decide([facts(view="PA"), facts(view="LL")], RULES)
    assert decision.draft is True
    assert decision.reason == "1 frontal of 2 chest images"


def test_laterals_only_are_ignored_with_reason() -> None:
    """A study holding only lateral views is ignored: no frontal view."""
    decision = decide([facts(view="LL"), facts(view=None, description="chest lateral")], RULES)
    assert decision.draft is False
    assert decision.ignore_reason is IgnoreReason.NO_FRONTAL_VIEW
    assert decision.reason == IgnoreReason.NO_FRONTAL_VIEW.value


def test_unknown_view_is_ignored_by_default() -> None:
    """Without draft_when_view_unknown, an image of unknown view is not drafted."""
    decision = decide([facts(view=None, description=None)], RULES)
    assert decision.draft is False
    assert decision.ignore_reason is IgnoreReason.NO_FRONTAL_VIEW


def test_unknown_view_is_drafted_when_configured() -> None:
    """draft_when_view_unknown lets an image of unknown view through."""
    rules = SelectionSettings(draft_when_view_unknown=True)
    decision = decide([facts(view=None, description="Chest 1 view")], rules)
    assert decision.draft is True


def test_draft_when_view_unknown_does_not_rescue_laterals() -> None:
    """Known laterals stay laterals even when unknown views are allowed."""
    rules = SelectionSettings(draft_when_view_unknown=True)
    decision = decide([facts(view="LL")], rules)
    assert decision.draft is False
    assert decision.ignore_reason is IgnoreReason.NO_FRONTAL_VIEW


@pytest.mark.parametrize(
    "sop_class", [BASIC_TEXT_SR, GRAYSCALE_PR, KEY_OBJECT, ENCAPSULATED_PDF, ECG_WAVEFORM]
)
def test_non_image_objects_alone_are_ignored(sop_class: str) -> None:
    """SRs, presentation states, key objects, PDFs and waveforms are not images."""
    decision = decide([facts(sop_class=sop_class, modality="DX")], RULES)
    assert decision.draft is False
    assert decision.ignore_reason is IgnoreReason.NO_IMAGES


def test_non_image_objects_do_not_count_as_evidence() -> None:
    """A lateral image plus a DX-labelled SR is still ignored for lack of a frontal view."""
    decision = decide([facts(view="LL"), facts(sop_class=BASIC_TEXT_SR, view="PA")], RULES)
    assert decision.draft is False
    assert decision.ignore_reason is IgnoreReason.NO_FRONTAL_VIEW


def test_empty_study_is_ignored() -> None:
    """A study without instances has no images."""
    decision = decide([], RULES)
    assert decision.draft is False
    assert decision.ignore_reason is IgnoreReason.NO_IMAGES


def test_mixed_study_drafts_on_the_qualifying_image() -> None:
    """A CT scout next to a DX chest PA does not stop the study from being drafted."""
    decision = decide([facts(sop_class=CT, modality="CT"), facts()], RULES)
    assert decision.draft is True


def test_configured_modalities_and_body_parts_apply() -> None:
    """Selection follows the configured modality and body part lists."""
    rules = SelectionSettings(modalities=["DX"], body_parts=["CHEST"])
    assert decide([facts(sop_class=CR, modality="CR")], rules).draft is False
    assert decide([facts(body_part="THORAX")], rules).draft is False
    assert decide([facts()], rules).draft is True


def test_frontal_views_setting_limits_which_projections_are_drafted() -> None:
    """With ``frontal_views = ["PA"]`` an AP-only study is ignored; a PA study is drafted."""
    pa_only = SelectionSettings(frontal_views=["PA"])
    ap_study = decide([facts(view="AP")], pa_only)
    assert ap_study.draft is False
    assert ap_study.ignore_reason is IgnoreReason.NO_FRONTAL_VIEW
    assert decide([facts(view="PA")], pa_only).draft is True
    assert decide([facts(view="AP")], RULES).draft is True


SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"


@pytest.mark.parametrize(
    "derived",
    [
        {"sop_class": SECONDARY_CAPTURE, "conversion_type": "WSD"},
        {"sop_class": SECONDARY_CAPTURE, "image_type": "ORIGINAL\\PRIMARY"},
        {"sop_class": MULTIFRAME_TRUE_COLOR_SC},
        {"image_type": "DERIVED\\PRIMARY"},
        {"image_type": "ORIGINAL\\SECONDARY"},
        {"image_type": "derived\\secondary\\AXIAL"},
        {"conversion_type": "DF"},
    ],
)
def test_derived_images_labelled_dx_are_ignored_with_their_reason(
    derived: dict[str, str]
) -> None:
    """A screenshot or derived image labelled DX chest PA is never drafted."""
    decision = decide([facts(**derived)], RULES)  # type: ignore[arg-type]
    assert decision.draft is False
    assert decision.ignore_reason is IgnoreReason.DERIVED_ONLY
    assert decision.reason == IgnoreReason.DERIVED_ONLY.value


def test_an_acquired_frontal_beside_a_screenshot_is_drafted_alone() -> None:
    """The derived image does not count; the acquired frontal still qualifies."""
    decision = decide(
        [facts(sop_class=SECONDARY_CAPTURE, conversion_type="WSD"), facts(view="LL")], RULES
    )
    assert decision.ignore_reason is IgnoreReason.NO_FRONTAL_VIEW
    decision = decide([facts(sop_class=SECONDARY_CAPTURE, conversion_type="WSD"), facts()],
                      RULES)
    assert decision.draft is True
    assert decision.reason == "1 frontal of 1 chest images"


def test_a_missing_image_type_is_not_taken_for_derived() -> None:
    """Rows indexed without Image Type (older rows) still qualify as acquired."""
    assert decide([facts(image_type=None)], RULES).draft is True
