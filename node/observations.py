"""The 14 CheXpert observations and the label a report gives each of them.

These names are the ones the SR template (``dicom_templates/chexpert_codes.toml``) codes and
the ones the evaluation harness reports on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class Observation(StrEnum):
    """A CheXpert observation; the value is the label exactly as CheXpert writes it."""

    NO_FINDING = "No Finding"
    ENLARGED_CARDIOMEDIASTINUM = "Enlarged Cardiomediastinum"
    CARDIOMEGALY = "Cardiomegaly"
    LUNG_OPACITY = "Lung Opacity"
    LUNG_LESION = "Lung Lesion"
    EDEMA = "Edema"
    CONSOLIDATION = "Consolidation"
    PNEUMONIA = "Pneumonia"
    ATELECTASIS = "Atelectasis"
    PNEUMOTHORAX = "Pneumothorax"
    PLEURAL_EFFUSION = "Pleural Effusion"
    PLEURAL_OTHER = "Pleural Other"
    FRACTURE = "Fracture"
    SUPPORT_DEVICES = "Support Devices"


class Mention(StrEnum):
    """What a report says about one observation (CheXpert's 1 / 0 / -1 / blank)."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    UNCERTAIN = "uncertain"
    NOT_MENTIONED = "not_mentioned"


SIX_FINDINGS: tuple[Observation, ...] = (
    Observation.ATELECTASIS,
    Observation.CARDIOMEGALY,
    Observation.CONSOLIDATION,
    Observation.EDEMA,
    Observation.PLEURAL_EFFUSION,
    Observation.PNEUMOTHORAX,
)
"""The six findings CXR-LLaVA reports F1 for."""

FIVE_CONDITIONS: tuple[Observation, ...] = (
    Observation.ATELECTASIS,
    Observation.CARDIOMEGALY,
    Observation.CONSOLIDATION,
    Observation.EDEMA,
    Observation.PLEURAL_EFFUSION,
)
"""The five CheXbert competition conditions LLaVA-Rad reports F1 for."""


@dataclass(frozen=True)
class ReportLabels:
    """Labels of one report: every observation maps to a :class:`Mention`.

    Observations absent from ``mentions`` are :attr:`Mention.NOT_MENTIONED`.
    """

    mentions: Mapping[Observation, Mention] = field(default_factory=dict)

    def __post_init__(self) -> None:
        full = {o: self.mentions.get(o, Mention.NOT_MENTIONED) for o in Observation}
        object.__setattr__(self, "mentions", MappingProxyType(full))

    def __getitem__(self, observation: Observation) -> Mention:
        return self.mentions[observation]

    def mentioned(self) -> dict[Observation, Mention]:
        """Only the observations the report mentions, in CheXpert order."""
        return {o: m for o, m in self.mentions.items() if m is not Mention.NOT_MENTIONED}


__all__ = ["FIVE_CONDITIONS", "Mention", "Observation", "ReportLabels", "SIX_FINDINGS"]
