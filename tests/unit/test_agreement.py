"""Agreement arithmetic, label conversion, urgent flags and the agreement chart."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from node.config import ConfigError, load_settings
from node.observations import Mention, Observation, ReportLabels
from node.quality.agreement import AgreementCounts, same_finding, tally, tally_reports
from node.quality.labels import (
    coded_observations,
    label_draft,
    labels_from_json,
    labels_to_json,
    report_text,
    urgent_flags,
)
from node.web.quality_view import agreement_chart
from workers.evaluation.labeler import label_report

P, N, U, M = Mention.POSITIVE, Mention.NEGATIVE, Mention.UNCERTAIN, Mention.NOT_MENTIONED


def test_negative_and_unmentioned_agree_but_uncertain_is_its_own_class() -> None:
    """Absent is absent whether said or not; uncertain agrees only with uncertain."""
    assert same_finding(N, M) and same_finding(M, N) and same_finding(M, M)
    assert same_finding(P, P) and same_finding(U, U)
    assert not same_finding(P, U) and not same_finding(U, N) and not same_finding(P, M)


def test_agreement_precision_and_recall_over_pairs() -> None:
    """Counts of a hand-worked set of ten pairs."""
    pairs = [(P, P), (P, P), (P, P),   # three true positives
             (P, N),                   # a false positive
             (M, P), (U, P),           # two positives the draft missed (uncertain counts no)
             (N, M), (M, M), (N, N),   # absent in both
             (U, U)]                   # uncertain in both
    counts = tally(pairs)
    assert counts == AgreementCounts(reports=10, agreeing=7, both_positive=3,
                                     draft_positive=4, final_positive=5)
    assert counts.agreement == pytest.approx(0.7)
    assert counts.precision == pytest.approx(3 / 4)
    assert counts.recall == pytest.approx(3 / 5)


def test_undefined_shares_are_none() -> None:
    """No pairs: no agreement; no positives: no precision or recall."""
    empty = AgreementCounts()
    assert empty.agreement is None and empty.precision is None and empty.recall is None
    absent = tally([(N, M), (M, M)])
    assert absent.agreement == 1.0 and absent.precision is None and absent.recall is None


def test_weighted_add_equals_repeated_pairs() -> None:
    """Adding a pair with a count is the same as adding it that many times."""
    assert AgreementCounts().add(P, N, 3) == tally([(P, N)] * 3)
    with pytest.raises(ValueError, match="negative"):
        AgreementCounts().add(P, N, -1)


def test_low_agreement_needs_enough_reports() -> None:
    """Below threshold alerts only with at least the minimum number of reports."""
    two_wrong = tally([(P, N), (P, N)])
    assert two_wrong.agreement == 0.0
    assert not two_wrong.is_low(0.8, min_reports=3)
    assert two_wrong.is_low(0.8, min_reports=2)
    assert not tally([(P, P)] * 4 + [(P, N)]).is_low(0.8, min_reports=1)  # 0.8 is not below
    assert tally([(P, P)] * 3 + [(P, N)]).is_low(0.8, min_reports=1)


def test_tally_reports_counts_every_observation() -> None:
    """Each signed report adds one pair to each of the 14 observations."""
    draft = ReportLabels({Observation.PNEUMOTHORAX: P, Observation.EDEMA: N})
    final = ReportLabels({Observation.PNEUMOTHORAX: N, Observation.EDEMA: N,
                          Observation.FRACTURE: P})
    counts = tally_reports([(draft, final), (draft, draft)])
    assert set(counts) == set(Observation)
    assert all(c.reports == 2 for c in counts.values())
    assert counts[Observation.PNEUMOTHORAX] == AgreementCounts(2, 1, 1, 2, 1)
    assert counts[Observation.EDEMA].agreement == 1.0
    assert counts[Observation.FRACTURE] == AgreementCounts(2, 1, 0, 0, 1)
    assert counts[Observation.FRACTURE].recall == 0.0


def test_labels_round_trip_through_json() -> None:
    """Stored labels name all 14 observations and read back equal."""
    labels = ReportLabels({Observation.PNEUMOTHORAX: P, Observation.PLEURAL_EFFUSION: U})
    stored = labels_to_json(labels)
    assert len(stored) == 14 and stored["Pneumothorax"] == "positive"
    assert stored["Edema"] == "not_mentioned"
    assert labels_from_json(stored) == labels
    with pytest.raises(ValueError, match="unknown value"):
        labels_from_json({"Pneumothorax": "maybe"})
    with pytest.raises(ValueError, match="unknown value"):
        labels_from_json({"Spleen": "positive"})


def test_coded_observations_use_sr_presence_in_chexpert_order() -> None:
    """Mentioned observations become present / absent / uncertain; others are left out."""
    labels = ReportLabels({Observation.SUPPORT_DEVICES: P, Observation.CARDIOMEGALY: N,
                           Observation.PNEUMOTHORAX: U})
    coded = coded_observations(labels)
    assert list(coded.items()) == [("Cardiomegaly", "absent"), ("Pneumothorax", "uncertain"),
                                   ("Support Devices", "present")]


def test_urgent_flags_follow_the_configured_observations() -> None:
    """Positive gives the name; uncertain flags 'possible …' only when configured."""
    labels = ReportLabels({Observation.PNEUMOTHORAX: P, Observation.PLEURAL_EFFUSION: U,
                           Observation.FRACTURE: P, Observation.EDEMA: N})
    assert urgent_flags(labels, ["Pneumothorax"]) == ["pneumothorax"]
    assert urgent_flags(labels, ["Pleural Effusion", "Pneumothorax", "Edema"]) == [
        "pneumothorax"]
    assert urgent_flags(labels, ["Pleural Effusion", "Pneumothorax", "Edema"],
                        include_uncertain=True) == ["pneumothorax", "possible pleural effusion"]
    hedged = ReportLabels({Observation.PNEUMOTHORAX: U})
    assert urgent_flags(hedged, ["Pneumothorax"]) == []
    assert load_settings().quality.urgent_uncertain is False
    assert urgent_flags(labels, []) == []
    with pytest.raises(ValueError):
        urgent_flags(labels, ["Spleen"])


def test_label_draft_labels_findings_and_impression_together() -> None:
    """The node's labeler sees both sections; the result carries codes and flags."""
    result = label_draft(label_report, " Large right pneumothorax. ",
                         "Small left pleural effusion.", ["Pneumothorax"])
    assert result.observations["Pneumothorax"] == "present"
    assert result.observations["Pleural Effusion"] == "present"
    assert result.urgent and result.flags == ["pneumothorax"]
    assert result.labels_json()["Pneumothorax"] == "positive"
    routine = label_draft(label_report, "No pneumothorax.", "", ["Pneumothorax"])
    assert not routine.urgent and routine.flags == []
    assert routine.observations == {"No Finding": "present", "Pneumothorax": "absent"}
    assert report_text(" Findings. ", "Impression.") == "Findings.\n\nImpression."
    assert report_text("", "Only impression.") == "Only impression."


def test_quality_settings_resolve_observation_names() -> None:
    """Urgent observations are matched without regard to case, '_' or '-'; unknown fails."""
    settings = load_settings(quality={"urgent_observations": ["pneumothorax",
                                                             "PLEURAL_EFFUSION",
                                                             "Pneumothorax"]})
    assert settings.quality.urgent_observations == ["Pneumothorax", "Pleural Effusion"]
    assert load_settings().quality.urgent_observations == ["Pneumothorax"]
    with pytest.raises(ConfigError, match="unknown observation 'Spleen'"):
        load_settings(quality={"urgent_observations": ["Spleen"]})
    with pytest.raises(ConfigError, match="agreement_threshold"):
        load_settings(quality={"agreement_threshold": 1.5})


def test_agreement_chart_draws_runs_dots_and_threshold() -> None:
    """A gap splits a line; a lone day is a dot; the threshold sits at its share."""
    days = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(5)]
    series = {Observation.PNEUMOTHORAX: [1.0, 0.5, None, 0.25, None],
              Observation.EDEMA: [None, None, None, None, 1.0]}
    svg = str(agreement_chart(days, series, threshold=0.75, title="Agreement", width=244,
                              height=136))
    # plot: x from 44 to 236 (step 48), y from 10 (100 %) to 110 (0 %)
    assert '<polyline class="series s0" points="44.0,10.0 92.0,60.0">' in svg
    assert '<circle class="series s0" cx="188.0" cy="85.0" r="3">' in svg
    assert '<circle class="series s1" cx="236.0" cy="10.0" r="3">' in svg
    assert re.search(r'<line class="threshold" x1="44" x2="236" y1="35.0" y2="35.0">', svg)
    assert "01 Nov" in svg and "05 Nov" in svg
