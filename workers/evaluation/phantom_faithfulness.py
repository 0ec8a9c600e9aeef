"""Does a draft say what a synthetic phantom shows? (demo studies, the demo model's tests)

A phantom's ground truth (``PhantomLabels.to_dict()``, as ``truth.json`` stores it) names the
findings drawn. A draft is *faithful* when the CheXpert labeler finds every one of them
positive in the draft and finds nothing positive or uncertain that the truth does not imply.
Observations CheXpert derives from a finding are allowed alongside it (consolidation,
oedema and atelectasis are lung opacities; consolidation may be called pneumonia; an
enlarged heart enlarges the cardiomediastinal silhouette).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node.observations import Mention, Observation
from workers.evaluation.labeler import label_report

_IMPLIED: dict[Observation, frozenset[Observation]] = {
    Observation.CONSOLIDATION: frozenset({Observation.LUNG_OPACITY, Observation.PNEUMONIA}),
    Observation.EDEMA: frozenset({Observation.LUNG_OPACITY}),
    Observation.ATELECTASIS: frozenset({Observation.LUNG_OPACITY}),
    Observation.CARDIOMEGALY: frozenset({Observation.ENLARGED_CARDIOMEDIASTINUM}),
}


_PHANTOM_FINDINGS: dict[str, Observation] = {
    "cardiomegaly": Observation.CARDIOMEGALY,
    "effusion": Observation.PLEURAL_EFFUSION,
    "pneumothorax": Observation.PNEUMOTHORAX,
    "consolidation": Observation.CONSOLIDATION,
    "edema": Observation.EDEMA,
    "atelectasis": Observation.ATELECTASIS,
    "devices": Observation.SUPPORT_DEVICES,
}
"""Phantom truth key → the observation a faithful draft must state when it is set."""


def truth_observations(labels: Mapping[str, Any]) -> frozenset[Observation]:
    """The observations a phantom's labels make positive.

    Parameters
    ----------
    labels
        ``PhantomLabels.to_dict()`` (the ``labels`` of a ``truth.json`` entry).
    """
    found = {observation for key, observation in _PHANTOM_FINDINGS.items() if labels.get(key)}
    if not found - {Observation.SUPPORT_DEVICES}:
        found.add(Observation.NO_FINDING)
    return frozenset(found)


@dataclass(frozen=True)
class Faithfulness:
    """How a draft's labels compare with a phantom's truth.

    Attributes
    ----------
    expected
        Observations the truth makes positive.
    said
        Observations the draft states as positive or uncertain.
    missing
        Expected observations the draft does not state as positive.
    invented
        Observations the draft states that the truth neither has nor implies.
    """

    expected: frozenset[Observation]
    said: frozenset[Observation]
    missing: frozenset[Observation]
    invented: frozenset[Observation]

    @property
    def faithful(self) -> bool:
        """Nothing missing, nothing invented."""
        return not self.missing and not self.invented


def check_draft(labels: Mapping[str, Any], draft_text: str) -> Faithfulness:
    """Compare a draft's CheXpert labels with a phantom's truth.

    Parameters
    ----------
    labels
        The phantom's labels (``PhantomLabels.to_dict()``).
    draft_text
        The drafted report (findings and impression).
    """
    expected = truth_observations(labels)
    mentions = label_report(draft_text).mentioned()
    said = frozenset(o for o, m in mentions.items()
                     if m in (Mention.POSITIVE, Mention.UNCERTAIN))
    positive = frozenset(o for o, m in mentions.items() if m is Mention.POSITIVE)
    allowed = set(expected)
    for observation in expected:
        allowed |= _IMPLIED.get(observation, frozenset())
    return Faithfulness(expected=expected, said=said, missing=expected - positive,
                        invented=said - allowed)


__all__ = ["Faithfulness", "check_draft", "truth_observations"]
