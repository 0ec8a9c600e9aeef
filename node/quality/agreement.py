"""Agreement of drafts with the reports radiologists signed, per CheXpert observation.

For one observation, each signed draft gives a pair (draft mention, final mention). Over a
set of pairs:

* **agreement** — the share of pairs that say the same thing, where a negative mention and
  no mention count as the same ("absent"), and positive and uncertain are each their own
  class;
* **precision** — of the drafts that found it positive, the share whose signed report did;
* **recall** — of the signed reports that found it positive, the share whose draft did.

Precision and recall count uncertain as negative, as CheXbert F1 does. Each is ``None``
when its denominator is zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from node.observations import Mention, Observation, ReportLabels

_ABSENT = frozenset({Mention.NEGATIVE, Mention.NOT_MENTIONED})


def same_finding(draft: Mention, final: Mention) -> bool:
    """Whether two mentions agree (negative and not mentioned are the same)."""
    return draft == final or (draft in _ABSENT and final in _ABSENT)


@dataclass(frozen=True)
class AgreementCounts:
    """Counts over the pairs of one observation.

    Attributes
    ----------
    reports
        Signed drafts counted.
    agreeing
        Pairs where draft and signed report agree (:func:`same_finding`).
    both_positive
        Pairs positive in both.
    draft_positive, final_positive
        Pairs positive in the draft, in the signed report.
    """

    reports: int = 0
    agreeing: int = 0
    both_positive: int = 0
    draft_positive: int = 0
    final_positive: int = 0

    @property
    def agreement(self) -> float | None:
        """Share of agreeing pairs; ``None`` when there are none."""
        return self.agreeing / self.reports if self.reports else None

    @property
    def precision(self) -> float | None:
        """Share of draft positives confirmed by the signed report."""
        return self.both_positive / self.draft_positive if self.draft_positive else None

    @property
    def recall(self) -> float | None:
        """Share of signed positives the draft found."""
        return self.both_positive / self.final_positive if self.final_positive else None

    def add(self, draft: Mention, final: Mention, count: int = 1) -> AgreementCounts:
        """These counts with ``count`` more pairs ``(draft, final)``."""
        if count < 0:
            raise ValueError("a pair count cannot be negative")
        positive_draft = draft is Mention.POSITIVE
        positive_final = final is Mention.POSITIVE
        return AgreementCounts(
            reports=self.reports + count,
            agreeing=self.agreeing + (count if same_finding(draft, final) else 0),
            both_positive=self.both_positive + (count if positive_draft and positive_final
                                                else 0),
            draft_positive=self.draft_positive + (count if positive_draft else 0),
            final_positive=self.final_positive + (count if positive_final else 0),
        )

    def is_low(self, threshold: float, min_reports: int) -> bool:
        """Whether agreement is below ``threshold`` over at least ``min_reports`` reports."""
        agreement = self.agreement
        return self.reports >= min_reports and agreement is not None and agreement < threshold


def tally(pairs: Iterable[tuple[Mention, Mention]]) -> AgreementCounts:
    """Counts over ``(draft mention, final mention)`` pairs."""
    counts = AgreementCounts()
    for draft, final in pairs:
        counts = counts.add(draft, final)
    return counts


def pairs_of(draft: ReportLabels,
             final: ReportLabels) -> dict[Observation, tuple[Mention, Mention]]:
    """The ``(draft, final)`` mention pair of every observation, in CheXpert order."""
    return {observation: (draft[observation], final[observation]) for observation in Observation}


def tally_reports(
    reports: Iterable[tuple[ReportLabels, ReportLabels]],
) -> Mapping[Observation, AgreementCounts]:
    """Per-observation counts over ``(draft labels, final labels)`` of signed reports."""
    counts = {observation: AgreementCounts() for observation in Observation}
    for draft, final in reports:
        for observation, (draft_mention, final_mention) in pairs_of(draft, final).items():
            counts[observation] = counts[observation].add(draft_mention, final_mention)
    return counts


__all__ = ["AgreementCounts", "pairs_of", "same_finding", "tally", "tally_reports"]
