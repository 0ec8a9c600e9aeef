"""Score the report labeler on the project's hand-labelled report set.

Run ``python -m workers.evaluation.score_labeler`` to print the per-observation precision and
recall table that ``docs/evaluation.md`` quotes (``--json`` for machine-readable output).

A labelled item lists the observations a radiologist reading it would label, each positive,
negative or uncertain; the others are not mentioned. The expected No Finding follows
CheXpert's definition from those expected labels. For each observation, a labeler output
counts as a true positive when it mentions the observation with exactly the expected label,
as a false positive when it mentions it with any other label, and as a false negative when
the expected mention is missed or labelled otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from node.observations import Mention, Observation, ReportLabels
from workers.evaluation.labeler import label_report

LABELLED_SET = Path(__file__).resolve().parent / "data" / "labelled_reports.jsonl"
"""The shipped labelled set: one JSON object per line with ``id``, ``text`` and ``labels``."""


class LabelledSetError(ValueError):
    """A line of the labelled set is malformed."""


@dataclass(frozen=True)
class LabelledItem:
    """One report sentence or short report with its expected labels."""

    item_id: str
    text: str
    expected: ReportLabels


@dataclass
class Tally:
    """True positive, false positive and false negative counts."""

    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 1.0 when nothing was predicted."""
        predicted = self.true_positive + self.false_positive
        return self.true_positive / predicted if predicted else 1.0

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 1.0 when nothing was expected."""
        expected = self.true_positive + self.false_negative
        return self.true_positive / expected if expected else 1.0

    @property
    def support(self) -> int:
        """How many expected mentions there are."""
        return self.true_positive + self.false_negative


@dataclass
class LabelerScore:
    """Precision and recall per observation and per label over a labelled set."""

    items: int = 0
    by_observation: dict[Observation, Tally] = field(
        default_factory=lambda: {o: Tally() for o in Observation})
    by_label: dict[Mention, Tally] = field(
        default_factory=lambda: {m: Tally() for m in Mention if m is not Mention.NOT_MENTIONED})
    errors: list[tuple[str, Observation, Mention, Mention]] = field(default_factory=list)

    def overall(self) -> Tally:
        """All observations pooled (micro)."""
        total = Tally()
        for tally in self.by_observation.values():
            total.true_positive += tally.true_positive
            total.false_positive += tally.false_positive
            total.false_negative += tally.false_negative
        return total


def expected_no_finding(labels: dict[Observation, Mention]) -> dict[Observation, Mention]:
    """Add CheXpert's No Finding to hand-written labels (positive iff no finding is present).

    An item whose only finding lies outside the 14 observations ("tortuous aorta") states
    ``"No Finding": "not_mentioned"`` itself; an explicit No Finding label is kept.
    """
    if Observation.NO_FINDING in labels:
        return labels
    present = (Mention.POSITIVE, Mention.UNCERTAIN)
    findings = [m for o, m in labels.items()
                if o not in (Observation.NO_FINDING, Observation.SUPPORT_DEVICES)]
    if not any(m in present for m in findings):
        return {**labels, Observation.NO_FINDING: Mention.POSITIVE}
    return labels


def load_labelled_set(path: Path = LABELLED_SET) -> list[LabelledItem]:
    """Read a labelled set (jsonl).

    Raises
    ------
    LabelledSetError
        If a line is not JSON, lacks ``id`` / ``text`` / ``labels``, or names an unknown
        observation or label.
    """
    items = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            labels = {Observation(k): Mention(v) for k, v in record["labels"].items()}
            items.append(LabelledItem(str(record["id"]), str(record["text"]),
                                      ReportLabels(expected_no_finding(labels))))
        except (json.JSONDecodeError, KeyError, ValueError, AttributeError) as exc:
            raise LabelledSetError(f"{path}:{number}: {exc}") from exc
    return items


def score(items: Iterable[LabelledItem]) -> LabelerScore:
    """Label every item and tally agreement with the expected labels."""
    result = LabelerScore()
    for item in items:
        result.items += 1
        predicted = label_report(item.text)
        for observation in Observation:
            want, got = item.expected[observation], predicted[observation]
            tally = result.by_observation[observation]
            if want is not Mention.NOT_MENTIONED and want is got:
                tally.true_positive += 1
                result.by_label[want].true_positive += 1
                continue
            if got is not Mention.NOT_MENTIONED:
                tally.false_positive += 1
                result.by_label[got].false_positive += 1
            if want is not Mention.NOT_MENTIONED:
                tally.false_negative += 1
                result.by_label[want].false_negative += 1
            if want is not got:
                result.errors.append((item.item_id, observation, want, got))
    return result


def format_markdown(result: LabelerScore) -> str:
    """The precision / recall tables as Markdown."""
    lines = [f"Labelled items: {result.items}", "",
             "| Observation | Expected mentions | Precision | Recall |",
             "|---|---:|---:|---:|"]
    for observation, tally in result.by_observation.items():
        lines.append(f"| {observation.value} | {tally.support} | {tally.precision:.3f} | "
                     f"{tally.recall:.3f} |")
    total = result.overall()
    lines.append(f"| **All (micro)** | {total.support} | {total.precision:.3f} | "
                 f"{total.recall:.3f} |")
    lines += ["", "| Label | Expected | Precision | Recall |", "|---|---:|---:|---:|"]
    for label, tally in result.by_label.items():
        lines.append(f"| {label.value} | {tally.support} | {tally.precision:.3f} | "
                     f"{tally.recall:.3f} |")
    return "\n".join(lines)


def as_json(result: LabelerScore) -> dict[str, object]:
    """The scores as a JSON-ready dictionary."""
    def entry(tally: Tally) -> dict[str, float | int]:
        return {"support": tally.support, "precision": round(tally.precision, 4),
                "recall": round(tally.recall, 4)}
    return {
        "items": result.items,
        "observations": {o.value: entry(t) for o, t in result.by_observation.items()},
        "labels": {m.value: entry(t) for m, t in result.by_label.items()},
        "overall": entry(result.overall()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print the labeler's precision and recall on a labelled set."""
    parser = argparse.ArgumentParser(prog="python -m workers.evaluation.score_labeler",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("labelled_set", nargs="?", type=Path, default=LABELLED_SET)
    parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    parser.add_argument("--errors", action="store_true", help="list every disagreement")
    args = parser.parse_args(argv)
    result = score(load_labelled_set(args.labelled_set))
    print(json.dumps(as_json(result), indent=2) if args.json else format_markdown(result))
    if args.errors:
        texts = {i.item_id: i.text for i in load_labelled_set(args.labelled_set)}
        for item_id, observation, want, got in result.errors:
            print(f"{item_id}\t{observation.value}\texpected={want.value}\tgot={got.value}\t"
                  f"{texts[item_id]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
