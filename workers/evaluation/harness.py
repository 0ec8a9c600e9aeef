"""The offline evaluation harness behind ``radnode eval``.

Input is the jsonl LLaVA-Rad's evaluation writes: one object per line with ``id``,
``reference`` and ``prediction`` (other keys, e.g. ``query``, are ignored). Output is every
metric with its bootstrap 95% interval: clinical F1 (six CXR-LLaVA findings; micro / macro
over the 14 observations and over the five CheXbert conditions; uncertain counted negative
and, as a variant, positive), ROUGE-L, BLEU-1 and BLEU-4.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from node.observations import SIX_FINDINGS, ReportLabels
from workers.evaluation.bootstrap import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    Estimate,
    bootstrap_many,
    resample_indices,
)
from workers.evaluation.labeler import label_report
from workers.evaluation.metrics import (
    ALL_OBSERVATIONS,
    GROUPS,
    UncertainPolicy,
    confusion_counts,
    macro_f1,
    micro_f1,
    per_observation_f1,
    presence_matrix,
)
from workers.evaluation.text_metrics import bleu_from_counts, bleu_stats, rouge_l

Progress = Callable[[str, float], None]

TEXT_METRICS: tuple[str, ...] = ("rouge_l", "bleu_1", "bleu_4")


class PredictionsError(ValueError):
    """The predictions file is malformed (the message names the line)."""


@dataclass(frozen=True)
class EvalRecord:
    """One study: its reference report and the generated one."""

    record_id: str
    reference: str
    prediction: str

    def to_json(self) -> dict[str, str]:
        """The jsonl object of this record."""
        return {"id": self.record_id, "reference": self.reference,
                "prediction": self.prediction}


def parse_records(lines: Iterable[str], source: str = "<input>") -> list[EvalRecord]:
    """Parse jsonl lines into records.

    Raises
    ------
    PredictionsError
        On a line that is not a JSON object, lacks ``id`` / ``reference`` / ``prediction``,
        has a non-string report, or repeats an ``id``; or when there are no records.
    """
    records: list[EvalRecord] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PredictionsError(f"{where}: not JSON ({exc.msg})") from exc
        if not isinstance(data, dict):
            raise PredictionsError(f"{where}: expected a JSON object")
        missing = [k for k in ("id", "reference", "prediction") if k not in data]
        if missing:
            raise PredictionsError(f"{where}: missing {', '.join(missing)}")
        for key in ("reference", "prediction"):
            if not isinstance(data[key], str):
                raise PredictionsError(f"{where}: {key} must be a string")
        record_id = str(data["id"])
        if record_id in seen:
            raise PredictionsError(f"{where}: id {record_id!r} appears twice")
        seen.add(record_id)
        records.append(EvalRecord(record_id, data["reference"], data["prediction"]))
    if not records:
        raise PredictionsError(f"{source}: no records")
    return records


def read_records(path: Path) -> list[EvalRecord]:
    """Read a predictions jsonl file (see :func:`parse_records`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PredictionsError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_records(text.splitlines(), str(path))


def write_records(records: Sequence[EvalRecord], path: Path) -> None:
    """Write records as jsonl (the format :func:`read_records` reads)."""
    Path(path).write_text("".join(json.dumps(r.to_json()) + "\n" for r in records),
                          encoding="utf-8")


@dataclass
class EvalReport:
    """Every metric of one evaluation run with its interval.

    ``clinical`` maps each :class:`UncertainPolicy` to metric name → estimate (names as
    :func:`workers.evaluation.metrics.clinical_f1` gives them); ``text`` holds ROUGE-L and
    BLEU-1 / BLEU-4.
    """

    count: int
    resamples: int
    seed: int
    confidence: float
    clinical: dict[UncertainPolicy, dict[str, Estimate]] = field(default_factory=dict)
    text: dict[str, Estimate] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dictionary (what ``radnode eval --json`` writes)."""
        return {
            "count": self.count,
            "bootstrap": {"resamples": self.resamples, "seed": self.seed,
                          "confidence": self.confidence},
            "text": {name: e.as_dict() for name, e in self.text.items()},
            "clinical": {
                f"uncertain_as_{policy.value}": {n: e.as_dict() for n, e in metrics.items()}
                for policy, metrics in self.clinical.items()
            },
        }


@dataclass(frozen=True)
class _PerRecord:
    reference: dict[UncertainPolicy, NDArray[np.bool_]]
    prediction: dict[UncertainPolicy, NDArray[np.bool_]]
    rouge: NDArray[np.float64]
    bleu_matches: NDArray[np.int64]
    bleu_totals: NDArray[np.int64]
    lengths: NDArray[np.int64]


def _per_record(records: Sequence[EvalRecord], progress: Progress | None) -> _PerRecord:
    reference_labels: list[ReportLabels] = []
    prediction_labels: list[ReportLabels] = []
    rouge, matches, totals, lengths = [], [], [], []
    for number, record in enumerate(records, start=1):
        reference_labels.append(label_report(record.reference))
        prediction_labels.append(label_report(record.prediction))
        rouge.append(rouge_l(record.reference, record.prediction))
        stats = bleu_stats(record.reference, record.prediction, max_order=4)
        matches.append(stats.matches)
        totals.append(stats.totals)
        lengths.append((stats.prediction_length, stats.reference_length))
        if progress is not None:
            progress(f"labelling {number}/{len(records)}", number / len(records))
    return _PerRecord(
        reference={p: presence_matrix(reference_labels, p) for p in UncertainPolicy},
        prediction={p: presence_matrix(prediction_labels, p) for p in UncertainPolicy},
        rouge=np.asarray(rouge, dtype=np.float64),
        bleu_matches=np.asarray(matches, dtype=np.int64),
        bleu_totals=np.asarray(totals, dtype=np.int64),
        lengths=np.asarray(lengths, dtype=np.int64),
    )


def _statistics(data: _PerRecord) -> Callable[[NDArray[np.int64]], dict[str, float]]:
    def compute(rows: NDArray[np.int64]) -> dict[str, float]:
        matches = data.bleu_matches[rows].sum(axis=0)
        totals = data.bleu_totals[rows].sum(axis=0)
        prediction_length, reference_length = (int(v) for v in data.lengths[rows].sum(axis=0))
        values = {
            "rouge_l": float(data.rouge[rows].mean()),
            "bleu_1": bleu_from_counts(matches[:1], totals[:1], prediction_length,
                                       reference_length),
            "bleu_4": bleu_from_counts(matches, totals, prediction_length, reference_length),
        }
        for policy in UncertainPolicy:
            counts = confusion_counts(data.reference[policy][rows], data.prediction[policy][rows])
            f1 = per_observation_f1(counts)
            for observation in SIX_FINDINGS:
                values[f"{policy.value}|f1/{observation.value}"] = float(
                    f1[ALL_OBSERVATIONS.index(observation)])
            for name, group in GROUPS.items():
                values[f"{policy.value}|micro_f1/{name}"] = micro_f1(counts, group)
                values[f"{policy.value}|macro_f1/{name}"] = macro_f1(counts, group)
        return values

    return compute


def evaluate(records: Sequence[EvalRecord], *, resamples: int = DEFAULT_RESAMPLES,
             seed: int = DEFAULT_SEED, confidence: float = 0.95,
             progress: Progress | None = None) -> EvalReport:
    """Compute every metric of ``records`` with bootstrap intervals.

    Parameters
    ----------
    records
        Reference and generated report pairs (at least one).
    resamples, seed, confidence
        Bootstrap settings; the same seed gives the same intervals.
    progress
        Called as ``(message, fraction)``: labelling is the first half, resampling the second.

    Raises
    ------
    ValueError
        If ``records`` is empty.
    """
    if not records:
        raise ValueError("nothing to evaluate")

    def first_half(message: str, fraction: float) -> None:
        if progress is not None:
            progress(message, fraction / 2)

    def second_half(message: str, fraction: float) -> None:
        if progress is not None:
            progress(message, 0.5 + fraction / 2)

    data = _per_record(records, first_half)
    estimates = bootstrap_many(_statistics(data), resample_indices(len(records), resamples, seed),
                               confidence, second_half)
    report = EvalReport(len(records), resamples, seed, confidence)
    report.text = {name: estimates[name] for name in TEXT_METRICS}
    for policy in UncertainPolicy:
        prefix = f"{policy.value}|"
        report.clinical[policy] = {name[len(prefix):]: value for name, value in estimates.items()
                                   if name.startswith(prefix)}
    return report


def format_table(report: EvalReport, policy: UncertainPolicy = UncertainPolicy.NEGATIVE) -> str:
    """A plain-text table of the report (clinical figures under ``policy``), in percent."""
    rows = [(f"F1 {name[3:]}" if name.startswith("f1/") else name.replace("_", " "), estimate)
            for name, estimate in report.clinical[policy].items()]
    rows += [(name.replace("_", "-").upper().replace("ROUGE-L", "ROUGE-L"), estimate)
             for name, estimate in report.text.items()]
    width = max(len(label) for label, _ in rows)
    header = (f"{report.count} studies; uncertain counted {policy.value}; "
              f"{int(report.confidence * 100)}% bootstrap interval over {report.resamples} "
              "resamples")
    lines = [header, f"{'metric':<{width}}  {'value':>6}  interval"]
    for label, estimate in rows:
        lines.append(f"{label:<{width}}  {estimate.value * 100:6.1f}  "
                     f"[{estimate.low * 100:5.1f}, {estimate.high * 100:5.1f}]")
    return "\n".join(lines)


__all__ = ["EvalRecord", "EvalReport", "PredictionsError", "TEXT_METRICS", "evaluate",
           "format_table", "parse_records", "read_records", "write_records"]
