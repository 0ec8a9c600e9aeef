"""The rule-based labeler: mention extraction, cue scope, aggregation, labelled-set accuracy."""

from __future__ import annotations

import pytest

from node.observations import Mention, Observation
from workers.evaluation.labeler import (
    LabelledMention,
    aggregate,
    label_mentions,
    label_report,
    split_sentences,
)
from workers.evaluation.score_labeler import (
    LABELLED_SET,
    load_labelled_set,
    score,
)

Obs, M = Observation, Mention
HELD_OUT_SET = LABELLED_SET.with_name("heldout_reports.jsonl")


@pytest.mark.parametrize(
    ("text", "observation", "expected"),
    [
        ("No pleural effusion.", Obs.PLEURAL_EFFUSION, M.NEGATIVE),
        ("Cannot exclude small left effusion.", Obs.PLEURAL_EFFUSION, M.UNCERTAIN),
        ("Heart size is enlarged.", Obs.CARDIOMEGALY, M.POSITIVE),
        ("Heart size is normal.", Obs.CARDIOMEGALY, M.NEGATIVE),
        ("The heart is not enlarged.", Obs.CARDIOMEGALY, M.NEGATIVE),
        ("Lines and tubes unchanged.", Obs.SUPPORT_DEVICES, M.POSITIVE),
        ("The endotracheal tube has been removed.", Obs.SUPPORT_DEVICES, M.NEGATIVE),
        ("No change in the small left pleural effusion.", Obs.PLEURAL_EFFUSION, M.POSITIVE),
        ("Pneumothorax is not seen.", Obs.PNEUMOTHORAX, M.NEGATIVE),
        ("Right pleural effusion has resolved.", Obs.PLEURAL_EFFUSION, M.NEGATIVE),
        ("Atelectasis versus consolidation.", Obs.CONSOLIDATION, M.UNCERTAIN),
        ("Bibasilar opacities may represent atelectasis.", Obs.LUNG_OPACITY, M.POSITIVE),
        ("Bibasilar opacities may represent atelectasis.", Obs.ATELECTASIS, M.UNCERTAIN),
        ("No focal consolidation to suggest pneumonia.", Obs.PNEUMONIA, M.NEGATIVE),
        ("Borderline cardiomegaly.", Obs.CARDIOMEGALY, M.UNCERTAIN),
        ("Normal cardiomediastinal silhouette.", Obs.ENLARGED_CARDIOMEDIASTINUM, M.NEGATIVE),
        ("Pericardial effusion.", Obs.PLEURAL_EFFUSION, M.NOT_MENTIONED),
        ("Kerley B lines are present.", Obs.SUPPORT_DEVICES, M.NOT_MENTIONED),
    ],
)
def test_single_sentences(text: str, observation: Observation, expected: Mention) -> None:
    """Mentions, exclusions, negation and uncertainty cues give the expected label."""
    assert label_report(text)[observation] is expected


def test_negation_covers_a_list_of_findings() -> None:
    """One "no" negates every finding of the list that follows it."""
    labels = label_report("No pneumothorax, pleural effusion, or focal consolidation.")
    assert labels.mentioned() == {Obs.NO_FINDING: M.POSITIVE, Obs.PNEUMOTHORAX: M.NEGATIVE,
                                  Obs.PLEURAL_EFFUSION: M.NEGATIVE, Obs.CONSOLIDATION: M.NEGATIVE}


def test_negation_stops_at_the_clause_boundary() -> None:
    """A negation does not reach past "but" into the next clause."""
    labels = label_report("No pneumothorax, but there is a small left pleural effusion.")
    assert labels[Obs.PNEUMOTHORAX] is M.NEGATIVE
    assert labels[Obs.PLEURAL_EFFUSION] is M.POSITIVE


def test_negation_stops_at_the_sentence_end() -> None:
    """Scope is the sentence: the next sentence's finding stays positive."""
    labels = label_report("No pleural effusion. Heart size is enlarged.")
    assert labels[Obs.PLEURAL_EFFUSION] is M.NEGATIVE
    assert labels[Obs.CARDIOMEGALY] is M.POSITIVE


def test_positive_beats_uncertain_beats_negative() -> None:
    """CheXpert aggregation across mentions of one observation."""
    negative_then_uncertain = label_report("No definite effusion. Small effusion not excluded.")
    assert negative_then_uncertain[Obs.PLEURAL_EFFUSION] is M.UNCERTAIN
    uncertain_then_positive = label_report("Possible left effusion. Right pleural effusion.")
    assert uncertain_then_positive[Obs.PLEURAL_EFFUSION] is M.POSITIVE


def test_aggregate_precedence_on_given_mentions() -> None:
    """aggregate() itself applies positive > uncertain > negative."""
    mentions = [LabelledMention(Obs.EDEMA, M.NEGATIVE, "", ""),
                LabelledMention(Obs.EDEMA, M.UNCERTAIN, "", ""),
                LabelledMention(Obs.FRACTURE, M.NEGATIVE, "", ""),
                LabelledMention(Obs.FRACTURE, M.POSITIVE, "", "")]
    labels = aggregate(mentions)
    assert labels[Obs.EDEMA] is M.UNCERTAIN
    assert labels[Obs.FRACTURE] is M.POSITIVE


def test_no_finding_ignores_support_devices() -> None:
    """No Finding is positive when only devices (and negatives) are mentioned."""
    labels = label_report("Endotracheal tube in place. No pneumothorax.")
    assert labels[Obs.NO_FINDING] is M.POSITIVE
    assert labels[Obs.SUPPORT_DEVICES] is M.POSITIVE


def test_no_finding_absent_when_a_finding_is_uncertain() -> None:
    """An uncertain finding is enough to withdraw No Finding."""
    labels = label_report("Possible small left effusion.")
    assert labels[Obs.NO_FINDING] is M.NOT_MENTIONED


def test_heart_failure_makes_cardiomegaly_uncertain() -> None:
    """CheXpert: a positive heart-failure mention is Edema and uncertain Cardiomegaly."""
    labels = label_report("Findings consistent with congestive heart failure.")
    assert labels[Obs.EDEMA] is M.POSITIVE
    assert labels[Obs.CARDIOMEGALY] is M.UNCERTAIN
    assert label_report("Heart failure with cardiomegaly.")[Obs.CARDIOMEGALY] is M.POSITIVE
    assert label_report("No evidence of CHF.")[Obs.CARDIOMEGALY] is M.NOT_MENTIONED


def test_sentences_split_without_breaking_decimals() -> None:
    """Sentence splitting keeps "1.5 cm" and "vs." inside their sentence."""
    assert split_sentences("A 1.5 cm nodule.\nAtelectasis vs. pneumonia. OK") == [
        "a 1.5 cm nodule.", "atelectasis vs. pneumonia.", "ok"]


def test_mentions_carry_their_clause() -> None:
    """label_mentions reports each mention with the words it was found in."""
    mentions = label_mentions("Heart size is mildly enlarged; no edema.")
    assert [(m.observation, m.mention, m.text) for m in mentions] == [
        (Obs.CARDIOMEGALY, M.POSITIVE, "heart size is mildly enlarged"),
        (Obs.EDEMA, M.NEGATIVE, "edema")]


def test_empty_report_is_no_finding() -> None:
    """An empty report mentions nothing, so No Finding is positive (as in CheXpert)."""
    assert label_report("").mentioned() == {Obs.NO_FINDING: M.POSITIVE}


def test_non_text_is_refused() -> None:
    """Bad input gets a clear error."""
    with pytest.raises(TypeError, match="must be a string"):
        label_report(None)  # type: ignore[arg-type]


def test_labelled_set_is_large_and_varied() -> None:
    """The shipped set has at least 300 items covering every observation."""
    items = load_labelled_set()
    assert len(items) >= 300
    covered = {o for item in items for o in item.expected.mentioned()}
    assert covered == set(Observation)


def test_precision_and_recall_on_the_labelled_set() -> None:
    """Every observation reaches precision and recall of at least 0.95 on the labelled set."""
    result = score(load_labelled_set())
    for observation, tally in result.by_observation.items():
        assert tally.precision >= 0.95, (observation, tally)
        assert tally.recall >= 0.95, (observation, tally)
    assert result.overall().precision >= 0.98
    assert result.overall().recall >= 0.98


def test_precision_and_recall_on_the_held_out_set() -> None:
    """On sentences never used to write the rules, pooled precision and recall reach 0.93."""
    result = score(load_labelled_set(HELD_OUT_SET))
    assert result.items >= 80
    assert result.overall().precision >= 0.93
    assert result.overall().recall >= 0.93
