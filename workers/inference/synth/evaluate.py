"""Held-out agreement of a synthetic bundle: does the draft say what the phantom shows?

Each held-out phantom goes through the drafting path (stored values -> 8-bit -> model input ->
encoder -> greedy generation); the findings named in the generated text (keyword reader in
:mod:`workers.inference.synth.reports`) are compared with the phantom's labels.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.inference.bundle import LoadedBundle
from workers.inference.preprocess import to_model_input
from workers.inference.synth.data import stored_to_display
from workers.inference.synth.phantom import PhantomLabels, random_phantom
from workers.inference.synth.reports import ReadFindings, read_findings

FINDINGS: tuple[str, ...] = (
    "cardiomegaly",
    "effusion",
    "pneumothorax",
    "consolidation",
    "edema",
    "atelectasis",
    "ett",
    "central_line",
    "ng_tube",
    "pacemaker",
)
SIDED: tuple[str, ...] = ("effusion", "pneumothorax", "consolidation", "atelectasis")


def _truth(labels: PhantomLabels) -> dict[str, str | bool | None]:
    return {
        "cardiomegaly": labels.cardiomegaly,
        "effusion": labels.effusion.side if labels.effusion else None,
        "pneumothorax": labels.pneumothorax.side if labels.pneumothorax else None,
        "consolidation": labels.consolidation.side if labels.consolidation else None,
        "edema": labels.edema,
        "atelectasis": labels.atelectasis,
        "ett": "ett" in labels.devices,
        "central_line": "central_line" in labels.devices,
        "ng_tube": "ng_tube" in labels.devices,
        "pacemaker": "pacemaker" in labels.devices,
    }


def _predicted(found: ReadFindings) -> dict[str, str | bool | None]:
    return {
        "cardiomegaly": found.cardiomegaly,
        "effusion": found.effusion,
        "pneumothorax": found.pneumothorax,
        "consolidation": found.consolidation,
        "edema": found.edema,
        "atelectasis": found.atelectasis,
        "ett": "ett" in found.devices,
        "central_line": "central_line" in found.devices,
        "ng_tube": "ng_tube" in found.devices,
        "pacemaker": "pacemaker" in found.devices,
    }


@dataclass
class FindingAgreement:
    """Counts for one finding over the held-out set."""

    positives: int = 0
    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0
    true_negative: int = 0
    side_correct: int = 0

    @property
    def total(self) -> int:
        """Number of studies scored."""
        return self.true_positive + self.false_positive + self.false_negative + self.true_negative

    def as_dict(self) -> dict[str, Any]:
        """Counts plus agreement (accuracy), sensitivity, specificity, F1 and side accuracy."""
        total = max(self.total, 1)
        tp, fp, fn, tn = (
            self.true_positive,
            self.false_positive,
            self.false_negative,
            self.true_negative,
        )
        return {
            "positives": self.positives,
            "agreement": round((tp + tn) / total, 4),
            "sensitivity": round(tp / (tp + fn), 4) if tp + fn else None,
            "specificity": round(tn / (tn + fp), 4) if tn + fp else None,
            "f1": round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn else None,
            "side_accuracy_when_detected": round(self.side_correct / tp, 4) if tp else None,
        }


@dataclass
class AgreementReport:
    """Per-finding agreement of generated drafts with phantom labels."""

    studies: int
    per_finding: dict[str, FindingAgreement]
    exact_match: int
    seconds: float
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        per = {name: agreement.as_dict() for name, agreement in self.per_finding.items()}
        macro = float(np.mean([p["agreement"] for p in per.values()]))
        return {
            "studies": self.studies,
            "macro_agreement": round(macro, 4),
            "all_findings_correct": round(self.exact_match / max(self.studies, 1), 4),
            "seconds": round(self.seconds, 2),
            "per_finding": per,
            "examples": self.examples,
        }

    def to_json(self) -> str:
        """Pretty JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2)


def evaluate_bundle(
    bundle: LoadedBundle,
    *,
    studies: int = 200,
    seed: int = 900_000,
    size: int = 256,
    batch_size: int = 16,
    keep_examples: int = 3,
) -> AgreementReport:
    """Draft held-out phantoms and score the drafts against their labels.

    Parameters
    ----------
    bundle
        A loaded synthetic bundle.
    studies
        Number of held-out phantoms (seeds ``seed .. seed + studies - 1``, disjoint from the
        training seeds for any training seed below 900).
    seed
        First held-out seed.
    size
        Rendered size of the phantoms (larger than the model input, like real images).
    batch_size
        Images generated together.
    keep_examples
        Number of (labels, draft) pairs kept in the report for inspection.

    Returns
    -------
    AgreementReport
    """
    started = time.perf_counter()
    spec = bundle.manifest.preprocess
    per = {name: FindingAgreement() for name in FINDINGS}
    exact = 0
    examples: list[dict[str, Any]] = []
    seeds = list(range(seed, seed + studies))
    for offset in range(0, len(seeds), batch_size):
        chunk = seeds[offset : offset + batch_size]
        phantoms = [random_phantom(s, size=size) for s in chunk]
        pixels = np.stack(
            [to_model_input(stored_to_display(p.pixels, p.bits), spec) for p in phantoms]
        )
        embeds = bundle.encode(pixels)
        results = bundle.generate_batch(list(embeds))
        for phantom, result in zip(phantoms, results, strict=True):
            truth = _truth(phantom.labels)
            predicted = _predicted(read_findings(result.text))
            all_right = True
            for name in FINDINGS:
                agreement = per[name]
                is_true = bool(truth[name])
                said = bool(predicted[name])
                agreement.positives += int(is_true)
                if is_true and said:
                    agreement.true_positive += 1
                    if name not in SIDED or predicted[name] == truth[name]:
                        agreement.side_correct += 1
                    elif name in SIDED:
                        all_right = False
                elif said:
                    agreement.false_positive += 1
                    all_right = False
                elif is_true:
                    agreement.false_negative += 1
                    all_right = False
                else:
                    agreement.true_negative += 1
            exact += int(all_right)
            if len(examples) < keep_examples:
                examples.append({"labels": phantom.labels.to_dict(), "draft": result.text})
    return AgreementReport(
        studies=len(seeds),
        per_finding=per,
        exact_match=exact,
        seconds=time.perf_counter() - started,
        examples=examples,
    )


__all__ = ["AgreementReport", "FINDINGS", "FindingAgreement", "evaluate_bundle"]
