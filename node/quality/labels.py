"""Labelling a draft: CheXpert labels, coded observations and urgent flags.

A report's labels are stored on its :class:`~node.db.models.Report` row (``labels``) as a
JSON object mapping every CheXpert observation name to its mention
(``{"Pneumothorax": "positive", "Edema": "not_mentioned", ...}``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from node.observations import Mention, Observation, ReportLabels
from node.reports.sr_template import Presence

#: Labels one report text (``workers.evaluation.labeler.label_report`` by default).
Labeler = Callable[[str], ReportLabels]

#: Presence written in the SR for each mention; unmentioned observations are left out.
PRESENCE_OF_MENTION: Mapping[Mention, Presence] = {
    Mention.POSITIVE: "present",
    Mention.NEGATIVE: "absent",
    Mention.UNCERTAIN: "uncertain",
}

#: Prefix of the flag of an urgent observation the report is uncertain about.
UNCERTAIN_FLAG_PREFIX = "possible "


def default_labeler(rules_dir: Path | None = None) -> Labeler:
    """The node's CheXpert labeler (imported when first needed).

    Parameters
    ----------
    rules_dir
        A site's folder of labeler rule files (``[quality] labeler_rules_dir``), added to
        the shipped phrase tables; ``None`` for the shipped tables alone.

    Raises
    ------
    workers.evaluation.labeler_rules.RulesError
        If the site's rule files are malformed.
    """
    from workers.evaluation.labeler import label_report

    if rules_dir is None:
        return label_report
    from workers.evaluation.labeler_rules import site_rules

    return partial(label_report, rules=site_rules(Path(rules_dir).resolve()))


def report_text(findings: str, impression: str) -> str:
    """The text a report is labelled from: its findings, then its impression."""
    return "\n\n".join(part.strip() for part in (findings, impression) if part and part.strip())


def labels_to_json(labels: ReportLabels) -> dict[str, str]:
    """Labels as stored in ``reports.labels``: every observation name to its mention."""
    return {observation.value: labels[observation].value for observation in Observation}


def labels_from_json(data: Mapping[str, Any]) -> ReportLabels:
    """Read labels stored by :func:`labels_to_json`.

    Raises
    ------
    ValueError
        On an unknown observation name or mention.
    """
    if not isinstance(data, Mapping):
        raise ValueError("stored labels must be a JSON object")
    mentions: dict[Observation, Mention] = {}
    for name, mention in data.items():
        try:
            mentions[Observation(name)] = Mention(mention)
        except ValueError as exc:
            raise ValueError(f"stored labels hold an unknown value: {name!r}: {mention!r}") \
                from exc
    return ReportLabels(mentions)


def coded_observations(labels: ReportLabels) -> dict[str, Presence]:
    """The observations a report mentions with their SR presence, in CheXpert order."""
    return {observation.value: PRESENCE_OF_MENTION[mention]
            for observation, mention in labels.mentioned().items()}


def urgent_flags(labels: ReportLabels, urgent_observations: Sequence[str], *,
                 include_uncertain: bool = False) -> list[str]:
    """Triage flags of the urgent observations a report finds present (or possible).

    Parameters
    ----------
    labels
        The report's labels.
    urgent_observations
        Observation names (``QualitySettings.urgent_observations``).
    include_uncertain
        Whether an uncertain mention flags too (``QualitySettings.urgent_uncertain``).

    Returns
    -------
    list of str
        ``"pneumothorax"`` for a positive mention, ``"possible pneumothorax"`` for an
        uncertain one when ``include_uncertain``, in CheXpert order; empty when the report
        is routine.

    Raises
    ------
    ValueError
        If a name is not a CheXpert observation.
    """
    wanted = {Observation(name) for name in urgent_observations}
    flags: list[str] = []
    for observation in Observation:
        if observation not in wanted:
            continue
        mention = labels[observation]
        if mention is Mention.POSITIVE:
            flags.append(observation.value.lower())
        elif mention is Mention.UNCERTAIN and include_uncertain:
            flags.append(UNCERTAIN_FLAG_PREFIX + observation.value.lower())
    return flags


@dataclass(frozen=True)
class DraftLabelling:
    """What labelling a draft gives: its labels, SR observations and triage flags."""

    labels: ReportLabels
    observations: dict[str, Presence]
    flags: list[str]

    @property
    def urgent(self) -> bool:
        """Whether the draft flags the study urgent."""
        return bool(self.flags)

    def labels_json(self) -> dict[str, str]:
        """The labels as stored in ``reports.labels``."""
        return labels_to_json(self.labels)


def label_draft(labeler: Labeler, findings: str, impression: str,
                urgent_observations: Sequence[str], *,
                include_uncertain: bool = False) -> DraftLabelling:
    """Label a draft's text and derive its coded observations and urgent flags."""
    labels = labeler(report_text(findings, impression))
    return DraftLabelling(labels, coded_observations(labels),
                          urgent_flags(labels, urgent_observations,
                                       include_uncertain=include_uncertain))


__all__ = [
    "PRESENCE_OF_MENTION",
    "DraftLabelling",
    "Labeler",
    "coded_observations",
    "default_labeler",
    "label_draft",
    "labels_from_json",
    "labels_to_json",
    "report_text",
    "urgent_flags",
]
