"""Clinical F1 figures and the bootstrap, against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from node.observations import Mention, Observation, ReportLabels
from workers.evaluation.bootstrap import bootstrap, bootstrap_many, resample_indices
from workers.evaluation.metrics import UncertainPolicy, clinical_f1

Obs, M = Observation, Mention
P, N, U, NM = M.POSITIVE, M.NEGATIVE, M.UNCERTAIN, M.NOT_MENTIONED

REFERENCE = [ReportLabels({Obs.CARDIOMEGALY: P, Obs.EDEMA: P}), ReportLabels({Obs.CARDIOMEGALY: P}),
             ReportLabels({Obs.CARDIOMEGALY: N}), ReportLabels({Obs.CARDIOMEGALY: U})]
PREDICTION = [ReportLabels({Obs.CARDIOMEGALY: P, Obs.EDEMA: P}),
              ReportLabels({Obs.CARDIOMEGALY: N}),
              ReportLabels({Obs.CARDIOMEGALY: P}), ReportLabels({Obs.CARDIOMEGALY: P})]


def test_f1_uncertain_as_negative() -> None:
    """Cardiomegaly TP 1, FP 2, FN 1 → 2/5; Edema 1; micro over 5: TP 2, FP 2, FN 1 → 4/7."""
    result = clinical_f1(REFERENCE, PREDICTION, UncertainPolicy.NEGATIVE)
    assert result["f1/Cardiomegaly"] == pytest.approx(0.4)
    assert result["f1/Edema"] == pytest.approx(1.0)
    assert result["f1/Atelectasis"] == 0.0
    assert result["micro_f1/5"] == pytest.approx(4 / 7)
    assert result["macro_f1/5"] == pytest.approx((0.4 + 1.0) / 5)
    assert result["macro_f1/14"] == pytest.approx((0.4 + 1.0) / 14)


def test_f1_uncertain_as_positive() -> None:
    """The uncertain reference counts present: Cardiomegaly TP 2, FP 1, FN 1 → 2/3."""
    result = clinical_f1(REFERENCE, PREDICTION, UncertainPolicy.POSITIVE)
    assert result["f1/Cardiomegaly"] == pytest.approx(2 / 3)
    assert result["micro_f1/14"] == pytest.approx(6 / 8)


def test_six_findings_are_reported() -> None:
    """The CXR-LLaVA findings each get an F1."""
    result = clinical_f1(REFERENCE, PREDICTION)
    assert {k for k in result if k.startswith("f1/")} == {
        "f1/Atelectasis", "f1/Cardiomegaly", "f1/Consolidation", "f1/Edema",
        "f1/Pleural Effusion", "f1/Pneumothorax"}


def test_resamples_are_seeded() -> None:
    """The same seed draws the same resamples; another seed draws others."""
    first, again = resample_indices(20, 500, seed=3), resample_indices(20, 500, seed=3)
    assert first.shape == (500, 20)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, resample_indices(20, 500, seed=4))


def test_bootstrap_interval_of_a_mean() -> None:
    """The interval brackets the full-set mean and collapses for constant data."""
    values = np.arange(100, dtype=np.float64)
    estimate = bootstrap(lambda rows: float(values[rows].mean()), resample_indices(100))
    assert estimate.value == pytest.approx(49.5)
    assert estimate.low < 49.5 < estimate.high
    assert estimate.high - estimate.low < 20
    constant = bootstrap_many(lambda rows: {"c": 1.0}, resample_indices(10))
    assert (constant["c"].low, constant["c"].high) == (1.0, 1.0)


def test_bootstrap_refuses_empty_sets() -> None:
    """Nothing to resample is an error, not a silent zero."""
    with pytest.raises(ValueError, match="empty"):
        resample_indices(0)
