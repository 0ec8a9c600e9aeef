"""Sentence structures that real radiology reports use and the labeler once got wrong.

Each case is written for this test (same structure as the reports, other words) and asserts
the status a reader gives the observation.
"""

from __future__ import annotations

import pytest

from node.observations import Mention, Observation
from node.quality.labels import urgent_flags
from workers.evaluation.labeler import label_mentions, label_report

Obs, M = Observation, Mention


@pytest.mark.parametrize(
    ("text", "observation", "expected"),
    [
        # A trailing "is seen / identified" belongs to the negated list.
        ("No effusion or pneumothorax is identified.", Obs.PNEUMOTHORAX, M.NEGATIVE),
        ("No effusion or pneumothorax is identified.", Obs.PLEURAL_EFFUSION, M.NEGATIVE),
        ("No airspace disease, worrisome nodule, large effusion, or pneumothorax is noted.",
         Obs.PNEUMOTHORAX, M.NEGATIVE),
        ("No airspace disease, worrisome nodule, large effusion, or pneumothorax is noted.",
         Obs.PLEURAL_EFFUSION, M.NEGATIVE),
        # "and … is present" after a negated finding still asserts the second finding.
        ("No effusion and cardiomegaly is present.", Obs.CARDIOMEGALY, M.POSITIVE),
        # A size word after a comma does not cut a negated list.
        ("No evidence of lobar consolidation, large effusion/pneumothorax.",
         Obs.PNEUMOTHORAX, M.NEGATIVE),
        ("No consolidation, small effusion, or pneumothorax.", Obs.PLEURAL_EFFUSION,
         M.NEGATIVE),
        # … but a size word starting a new finding after a comma does.
        ("No pneumothorax, small left pleural effusion.", Obs.PLEURAL_EFFUSION, M.POSITIVE),
        # Negation does not reach across "with" and a sized finding.
        ("No pneumothorax with right small pleural effusion.", Obs.PLEURAL_EFFUSION,
         M.POSITIVE),
        ("No pneumothorax with right small pleural effusion.", Obs.PNEUMOTHORAX, M.NEGATIVE),
        # A resolution verb after a list covers the whole list.
        ("Atelectasis, consolidation, and effusion have resolved since the prior study.",
         Obs.ATELECTASIS, M.NEGATIVE),
        ("Atelectasis, consolidation, and effusion have resolved since the prior study.",
         Obs.CONSOLIDATION, M.NEGATIVE),
        # Uncertainty cues, before and after the finding.
        ("It is difficult to entirely exclude a small pneumothorax.", Obs.PNEUMOTHORAX,
         M.UNCERTAIN),
        ("Possibility of early pneumonia.", Obs.PNEUMONIA, M.UNCERTAIN),
        ("Right lower lobe pneumonia suspected.", Obs.PNEUMONIA, M.UNCERTAIN),
        ("Question small left pleural effusion.", Obs.PLEURAL_EFFUSION, M.UNCERTAIN),
        ("A small pneumothorax may not be demonstrated on this supine view.",
         Obs.PNEUMOTHORAX, M.UNCERTAIN),
        ("Evaluation for pneumothorax is limited by positioning.", Obs.PNEUMOTHORAX,
         M.UNCERTAIN),
        # The age is indeterminate, the fracture is not.
        ("Age-indeterminate rib fracture on the left.", Obs.FRACTURE, M.POSITIVE),
        ("Left rib fracture of indeterminate age.", Obs.FRACTURE, M.POSITIVE),
        # History and devices.
        ("Sequelae of old granulomatous infection.", Obs.PNEUMONIA, M.NOT_MENTIONED),
        ("Lung lines are low bilaterally.", Obs.SUPPORT_DEVICES, M.NOT_MENTIONED),
        ("One of the sternal wires is fractured.", Obs.FRACTURE, M.NOT_MENTIONED),
        ("One of the sternal wires is fractured.", Obs.SUPPORT_DEVICES, M.POSITIVE),
        ("The plate of the humeral fixation is fractured.", Obs.FRACTURE, M.NOT_MENTIONED),
        # Scarring as the alternative leaves the finding present.
        ("Linear left basilar atelectasis or scarring.", Obs.ATELECTASIS, M.POSITIVE),
        ("Left basilar atelectasis versus pneumonia.", Obs.ATELECTASIS, M.UNCERTAIN),
        # A normal-appearing vascular phrase is no edema.
        ("Heart size and pulmonary vascular congestion appear within normal limits.",
         Obs.EDEMA, M.NEGATIVE),
        # Calcified granulomas and nodules are no lung lesion (CheXpert's definition).
        ("Calcified granuloma projecting over the left midlung zone.", Obs.LUNG_LESION,
         M.NOT_MENTIONED),
        ("Calcified nodule at the left apex.", Obs.LUNG_LESION, M.NOT_MENTIONED),
        ("Spiculated nodule in the right upper lobe.", Obs.LUNG_LESION, M.POSITIVE),
        ("Nodular density over the left fifth rib represents an artifact.", Obs.LUNG_LESION,
         M.NEGATIVE),
        ("Differential includes a pleural mass.", Obs.LUNG_LESION, M.NOT_MENTIONED),
        ("A 9 mm nodule without definite calcification.", Obs.LUNG_LESION, M.POSITIVE),
    ],
)
def test_report_sentence_structures(text: str, observation: Observation,
                                    expected: Mention) -> None:
    """Each structure gives the status a reader gives it."""
    assert label_report(text)[observation] is expected


@pytest.mark.parametrize("text", ["Heart size is borderline.",
                                  "Heart size is upper limits of normal or mildly enlarged."])
def test_borderline_heart_size_is_no_cardiomegaly(text: str) -> None:
    """A borderline or hedged heart size is never a positive Cardiomegaly."""
    assert label_report(text)[Obs.CARDIOMEGALY] is not M.POSITIVE


@pytest.mark.parametrize(
    ("text", "no_finding"),
    [
        ("Tortuous descending aorta noted. Lungs are clear.", M.NOT_MENTIONED),
        ("Degenerative spurring along the thoracic spine. No acute disease.", M.NOT_MENTIONED),
        ("Both lungs look hyperexpanded. No consolidation.", M.NOT_MENTIONED),
        ("Calcified granuloma projecting over the left midlung zone.", M.NOT_MENTIONED),
        ("Lungs are clear. No scoliosis.", M.POSITIVE),
        ("Sternotomy wires. Lungs are clear.", M.POSITIVE),
    ],
)
def test_findings_outside_the_fourteen_end_no_finding(text: str, no_finding: Mention) -> None:
    """A present finding outside the 14 makes the report not "No Finding"; a negated one
    or a support device does not."""
    assert label_report(text)[Obs.NO_FINDING] is no_finding


def test_outside_finding_is_reported_as_a_negative_no_finding_mention() -> None:
    """The mention that ends No Finding is listed, with its place in the text."""
    text = "Lungs are clear.  Tortuous aorta."
    [mention] = label_mentions(text)
    assert (mention.observation, mention.mention) == (Obs.NO_FINDING, M.NEGATIVE)
    assert mention.start is not None and mention.end is not None
    assert text[mention.start:mention.end] == "Tortuous"


def test_mention_spans_point_into_the_original_text() -> None:
    """Start and end index the report as given, whatever its casing and spacing."""
    text = "FINDINGS:\n  Heart   size is ENLARGED.\nNo  pleural effusion."
    spans = {(m.observation, m.mention): text[m.start:m.end] for m in label_mentions(text)
             if m.start is not None and m.end is not None}
    assert spans == {(Obs.CARDIOMEGALY, M.POSITIVE): "Heart   size is ENLARGED",
                     (Obs.PLEURAL_EFFUSION, M.NEGATIVE): "effusion"}


def test_negated_list_raises_no_urgent_flag() -> None:
    """The default urgent flag (positive Pneumothorax) stays off for a negated list and a
    hedge, and is on for a stated pneumothorax."""
    for routine in ("No pleural effusion or pneumothorax is demonstrated.",
                    "Cannot exclude a tiny apical pneumothorax."):
        assert urgent_flags(label_report(routine), ["Pneumothorax"]) == []
    assert urgent_flags(label_report("Small left apical pneumothorax."),
                        ["Pneumothorax"]) == ["pneumothorax"]
