"""Score the report labeler on a JSONL of reports with expected positive labels.

Each line is a JSON object with a report ``text`` (``--field``), an ``id`` and an object of
expected labels (``--expected``, default ``expected_extended``) mapping observation names to
``"positive"``. Labels are scored positive versus not positive, as manual indexing that only
names what is present allows. Printed: per-observation precision / recall / F1, micro-F1 over
the six CXR-LLaVA findings, and precision / recall of the urgent flag with the default
``[quality]`` configuration.

``--part tune`` keeps the reports whose id number is not a multiple of 5, ``--part check``
those whose id number is; ``--part all`` (default) keeps every report. Not run in CI::

    python bench/labeler_reports.py REPORTS.jsonl --part tune
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from node.config import load_settings
from node.observations import SIX_FINDINGS, Mention, Observation
from node.quality.labels import urgent_flags
from workers.evaluation.labeler import label_report

_ID_NUMBER = re.compile(r"(\d+)")


@dataclass
class Counts:
    """Positive-vs-not-positive agreement counts of one observation."""

    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0

    def add(self, expected: bool, predicted: bool) -> None:
        """Count one report."""
        self.true_positive += expected and predicted
        self.false_positive += predicted and not expected
        self.false_negative += expected and not predicted

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 0 when nothing was predicted."""
        flagged = self.true_positive + self.false_positive
        return self.true_positive / flagged if flagged else 0.0

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 0 when nothing was expected."""
        expected = self.true_positive + self.false_negative
        return self.true_positive / expected if expected else 0.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        total = 2 * self.true_positive + self.false_positive + self.false_negative
        return 2 * self.true_positive / total if total else 0.0


def in_part(record_id: str, part: str) -> bool:
    """Whether a report belongs to the chosen part (by its id number modulo 5)."""
    if part == "all":
        return True
    match = _ID_NUMBER.search(record_id)
    number = int(match.group(1)) if match else 0
    return (number % 5 == 0) == (part == "check")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the scores of the labeler on a JSONL file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("reports", type=Path)
    parser.add_argument("--field", default="text", help="report text field (default text)")
    parser.add_argument("--expected", default="expected_extended",
                        help="field of expected labels (default expected_extended)")
    parser.add_argument("--part", choices=("all", "tune", "check"), default="all")
    parser.add_argument("--urgent-uncertain", action="store_true",
                        help="flag uncertain urgent mentions too (as [quality] urgent_uncertain)")
    parser.add_argument("--errors", metavar="OBSERVATION",
                        help="print the ids of disagreements on this observation to stderr")
    args = parser.parse_args(argv)

    urgent = load_settings().quality
    include_uncertain = urgent.urgent_uncertain or args.urgent_uncertain
    counts = {o: Counts() for o in Observation}
    flag = Counts()
    reports = 0
    started = time.perf_counter()
    for line in args.reports.read_text("utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if not in_part(str(record.get("id", "")), args.part):
            continue
        reports += 1
        labels = label_report(str(record[args.field]))
        expected = {Observation(k) for k, v in record[args.expected].items() if v == "positive"}
        for observation in Observation:
            predicted = labels[observation] is Mention.POSITIVE
            counts[observation].add(observation in expected, predicted)
            if args.errors == observation.value and predicted != (observation in expected):
                print(f"{record.get('id')}\texpected={observation in expected}\t"
                      f"got={labels[observation].value}", file=sys.stderr)
        flags = urgent_flags(labels, urgent.urgent_observations,
                             include_uncertain=include_uncertain)
        wanted = any(Observation(name) in expected for name in urgent.urgent_observations)
        flag.add(wanted, bool(flags))
    elapsed = time.perf_counter() - started

    print(f"reports: {reports} ({args.part}), expected labels: {args.expected}, "
          f"labelled in {elapsed:.1f} s")
    print("| Observation | Expected | Predicted | Precision | Recall | F1 |")
    print("|---|---:|---:|---:|---:|---:|")
    for observation, c in counts.items():
        print(f"| {observation.value} | {c.true_positive + c.false_negative} | "
              f"{c.true_positive + c.false_positive} | {c.precision:.3f} | {c.recall:.3f} | "
              f"{c.f1:.3f} |")
    micro = Counts()
    for observation in SIX_FINDINGS:
        micro.true_positive += counts[observation].true_positive
        micro.false_positive += counts[observation].false_positive
        micro.false_negative += counts[observation].false_negative
    print(f"\nmicro-F1, six findings: {micro.f1:.3f} (P {micro.precision:.3f}, "
          f"R {micro.recall:.3f})")
    print(f"No Finding F1: {counts[Observation.NO_FINDING].f1:.3f}")
    print(f"Lung Lesion F1: {counts[Observation.LUNG_LESION].f1:.3f}")
    print(f"urgent flag ({', '.join(urgent.urgent_observations)}; uncertain flags: "
          f"{include_uncertain}): {flag.true_positive + flag.false_positive} flagged, "
          f"{flag.true_positive} true, precision {flag.precision:.3f}, "
          f"recall {flag.recall:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
