"""The degenerate-draft detector on crafted texts: loops, truncation, misplaced headers, and
ordinary reports (short and long) that must pass."""

from __future__ import annotations

import pytest

from workers.inference.degeneracy import DegenerateReason, assess_draft, describe

R = DegenerateReason

LONG_NORMAL = (
    "FINDINGS: Frontal and lateral views of the chest were obtained. The endotracheal tube "
    "terminates approximately 4 cm above the carina. An enteric tube courses below the "
    "diaphragm with the tip in the stomach. A right internal jugular central venous catheter "
    "terminates in the mid superior vena cava. The lungs are well expanded. There is no focal "
    "consolidation, pleural effusion, or pneumothorax. There is no pulmonary vascular "
    "congestion. The cardiomediastinal silhouette is within normal limits. The hilar contours "
    "are normal. No acute osseous abnormality is seen. Degenerative changes of the thoracic "
    "spine are noted. Surgical clips project over the right upper quadrant. "
    "IMPRESSION: 1. Support devices in standard position. 2. No acute cardiopulmonary "
    "process. No pleural effusion or pneumothorax."
)


@pytest.mark.parametrize("text", [
    "FINDINGS: The lungs are clear. No pleural effusion or pneumothorax. The heart is normal "
    "in size. IMPRESSION: No acute cardiopulmonary abnormality.",
    LONG_NORMAL,
    # A finding stated in the findings and again in the impression is ordinary.
    "FINDINGS: Large right pneumothorax. No pleural effusion. IMPRESSION: Large right "
    "pneumothorax.",
    # Findings-only models write no headers at all.
    "Heart size is normal. Lungs are clear. No effusion. No pneumothorax.",
    # Two findings share their phrasing without looping.
    "FINDINGS: There is no effusion. There is no pneumothorax. There is no consolidation. "
    "IMPRESSION: Normal chest.",
])
def test_ordinary_reports_are_not_flagged(text: str) -> None:
    quality = assess_draft(text, stopped_on_eos=True)
    assert not quality.degenerate, quality
    assert quality.reasons == () and quality.details == ()


def test_the_demo_models_looping_text_is_a_word_loop() -> None:
    text = ("FINDINGS: A No mild pulmonary edema. The heart is normal in size effusion effusion "
            "effusion effusion effusion")
    quality = assess_draft(text, stopped_on_eos=True)
    assert quality.reasons == (R.WORD_LOOP,)
    assert "effusion" in quality.details[0] and "5 times" in quality.details[0]


def test_a_looping_phrase_of_several_words_is_a_word_loop() -> None:
    text = "FINDINGS: " + "no pleural effusion or " * 3 + "pneumothorax."
    assert assess_draft(text, stopped_on_eos=True).reasons == (R.WORD_LOOP,)


def test_two_repeats_are_not_yet_a_loop_but_three_are() -> None:
    assert not assess_draft("The the heart is normal.", stopped_on_eos=True).degenerate
    assert assess_draft("The the the heart is normal.",
                        stopped_on_eos=True).reasons == (R.WORD_LOOP,)


def test_a_sentence_repeated_three_times_is_flagged_even_when_apart() -> None:
    text = ("FINDINGS: No pneumothorax. The heart is normal. No pneumothorax. Lungs are clear. "
            "IMPRESSION: No pneumothorax.")
    assert assess_draft(text, stopped_on_eos=True).reasons == (R.REPEATED_SENTENCE,)


def test_generation_cut_at_the_token_limit_is_flagged_and_unknown_is_not() -> None:
    text = "FINDINGS: The lungs are clear. No pleural effusion or"
    assert assess_draft(text, stopped_on_eos=False).reasons == (R.NO_END_TOKEN,)
    assert not assess_draft(text, stopped_on_eos=None).degenerate
    assert not assess_draft(text, stopped_on_eos=True).degenerate


@pytest.mark.parametrize("text, detail", [
    ("FINDINGS: Lungs clear. IMPRESSION: Normal. FINDINGS: Lungs clear.",
     "FINDINGS: appears twice"),
    ("FINDINGS: Lungs clear. IMPRESSION: Normal. INDICATION: cough.",
     "INDICATION: inside the impression"),
    ("Findings: lungs clear. Impression: normal. Findings: effusion.",
     "FINDINGS: appears twice"),
])
def test_a_section_header_inside_another_section_is_flagged(text: str, detail: str) -> None:
    quality = assess_draft(text, stopped_on_eos=True)
    assert quality.reasons == (R.MISPLACED_HEADER,)
    assert quality.details == (detail,)


def test_a_header_before_the_findings_is_ordinary() -> None:
    text = "COMPARISON: None. FINDINGS: Lungs are clear. IMPRESSION: Normal."
    assert not assess_draft(text, stopped_on_eos=True).degenerate


def test_empty_text_and_bare_headers_are_flagged() -> None:
    assert assess_draft("", stopped_on_eos=True).reasons == (R.EMPTY,)
    assert assess_draft("FINDINGS: IMPRESSION:", stopped_on_eos=True).reasons == (R.EMPTY,)


def test_several_reasons_are_reported_in_a_fixed_order() -> None:
    text = "FINDINGS: effusion effusion effusion IMPRESSION: FINDINGS: effusion"
    quality = assess_draft(text, stopped_on_eos=False)
    assert quality.reasons == (R.WORD_LOOP, R.NO_END_TOKEN, R.MISPLACED_HEADER)
    assert quality.reason_values() == ["word_loop", "no_end_token", "misplaced_header"]
    assert len(quality.details) == 3


def test_stored_reasons_read_as_words() -> None:
    words = describe(["no_end_token", "something_newer"])
    assert words[0].startswith("the model stopped at its length limit")
    assert words[1] == "something_newer"
