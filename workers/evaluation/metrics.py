"""CheXbert-style clinical F1 of generated reports against reference reports.

Both reports are labelled with the 14 CheXpert observations; an observation is *present*
when its label is positive (and, in the uncertain-as-positive variant, also when uncertain);
negative and not mentioned are absent. Per observation F1 = 2·TP / (2·TP + FP + FN), 0 when
the observation is absent from both sides everywhere (scikit-learn's zero-division rule).
Micro F1 pools TP / FP / FN over a group of observations; macro F1 is the mean of their F1.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from node.observations import (
    FIVE_CONDITIONS,
    SIX_FINDINGS,
    Mention,
    Observation,
    ReportLabels,
)

ALL_OBSERVATIONS: tuple[Observation, ...] = tuple(Observation)


class UncertainPolicy(StrEnum):
    """How an uncertain label counts when labels are made binary."""

    NEGATIVE = "negative"
    POSITIVE = "positive"


def presence_matrix(labels: Sequence[ReportLabels],
                    policy: UncertainPolicy = UncertainPolicy.NEGATIVE) -> NDArray[np.bool_]:
    """Rows: reports; columns: :data:`ALL_OBSERVATIONS`; True where the finding is present."""
    present = {Mention.POSITIVE}
    if policy is UncertainPolicy.POSITIVE:
        present.add(Mention.UNCERTAIN)
    matrix = np.zeros((len(labels), len(ALL_OBSERVATIONS)), dtype=np.bool_)
    for row, report in enumerate(labels):
        for column, observation in enumerate(ALL_OBSERVATIONS):
            matrix[row, column] = report[observation] in present
    return matrix


def confusion_counts(reference: NDArray[np.bool_], prediction: NDArray[np.bool_]
                     ) -> NDArray[np.int64]:
    """TP, FP, FN per observation as a (3, observations) array.

    Raises
    ------
    ValueError
        If the matrices differ in shape.
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"shape mismatch: {reference.shape} vs {prediction.shape}")
    true_positive = np.sum(reference & prediction, axis=0)
    false_positive = np.sum(~reference & prediction, axis=0)
    false_negative = np.sum(reference & ~prediction, axis=0)
    return np.stack([true_positive, false_positive, false_negative]).astype(np.int64)


def _f1(true_positive: NDArray[np.int64] | int, false_positive: NDArray[np.int64] | int,
        false_negative: NDArray[np.int64] | int) -> NDArray[np.float64]:
    numerator = 2 * np.asarray(true_positive, dtype=np.float64)
    denominator = numerator + np.asarray(false_positive) + np.asarray(false_negative)
    f1: NDArray[np.float64] = np.divide(numerator, denominator, out=np.zeros_like(numerator),
                                        where=denominator > 0)
    return f1


def columns(observations: Sequence[Observation]) -> list[int]:
    """Column indices of ``observations`` in the presence matrices."""
    return [ALL_OBSERVATIONS.index(o) for o in observations]


def per_observation_f1(counts: NDArray[np.int64]) -> NDArray[np.float64]:
    """F1 of each observation from :func:`confusion_counts`."""
    return _f1(counts[0], counts[1], counts[2])


def micro_f1(counts: NDArray[np.int64], observations: Sequence[Observation]) -> float:
    """F1 of TP / FP / FN pooled over ``observations``."""
    pooled = counts[:, columns(observations)].sum(axis=1)
    return float(_f1(int(pooled[0]), int(pooled[1]), int(pooled[2])))


def macro_f1(counts: NDArray[np.int64], observations: Sequence[Observation]) -> float:
    """Mean of the per-observation F1 over ``observations``."""
    return float(per_observation_f1(counts)[columns(observations)].mean())


GROUPS: dict[str, tuple[Observation, ...]] = {
    "14": ALL_OBSERVATIONS,
    "5": FIVE_CONDITIONS,
}
"""The observation groups micro / macro F1 are reported over."""


def clinical_f1(reference: Sequence[ReportLabels], prediction: Sequence[ReportLabels],
                policy: UncertainPolicy = UncertainPolicy.NEGATIVE) -> dict[str, float]:
    """Every clinical F1 figure of a set, without intervals.

    Returns
    -------
    dict
        ``f1/<observation>`` for the six CXR-LLaVA findings, and ``micro_f1/14``,
        ``macro_f1/14``, ``micro_f1/5``, ``macro_f1/5``.
    """
    counts = confusion_counts(presence_matrix(reference, policy),
                              presence_matrix(prediction, policy))
    f1 = per_observation_f1(counts)
    result = {f"f1/{o.value}": float(f1[ALL_OBSERVATIONS.index(o)]) for o in SIX_FINDINGS}
    for name, group in GROUPS.items():
        result[f"micro_f1/{name}"] = micro_f1(counts, group)
        result[f"macro_f1/{name}"] = macro_f1(counts, group)
    return result


__all__ = ["ALL_OBSERVATIONS", "GROUPS", "UncertainPolicy", "clinical_f1", "columns",
           "confusion_counts", "macro_f1", "micro_f1", "per_observation_f1", "presence_matrix"]
