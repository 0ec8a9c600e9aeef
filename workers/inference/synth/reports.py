"""Report text for phantoms: templated findings and impression with varied phrasing.

Sentences come in a fixed order (devices, lungs, pleura, heart) like most structured chest
radiograph reports; each sentence has a few interchangeable phrasings so that a model trained
on them writes fluent, varied text. :func:`read_findings` is the matching keyword reader used to
score generated drafts against the phantom's labels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from workers.inference.synth.phantom import PhantomLabels

FINDINGS_HEADER = "FINDINGS:"
IMPRESSION_HEADER = "IMPRESSION:"

_SIZE_WORD = {"small": "Small", "large": "Large"}

INDICATIONS: tuple[str, ...] = (
    "Shortness of breath.",
    "Cough and fever.",
    "Chest pain.",
    "Evaluate for pneumonia.",
    "Line placement.",
    "Post intubation.",
    "Hypoxia.",
    "Follow-up effusion.",
    "Preoperative evaluation.",
    "Trauma.",
    "Rule out pneumothorax.",
    "Dyspnea, history of heart failure.",
)
"""Example indications used in prompts during training and in demo studies."""


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(0, len(options)))]


def _device_sentences(labels: PhantomLabels, rng: np.random.Generator) -> list[str]:
    sentences: list[str] = []
    if "ett" in labels.devices:
        cm = labels.ett_cm_above_carina or 4
        sentences.append(
            _pick(
                rng,
                (
                    f"Endotracheal tube terminates approximately {cm} cm above the carina.",
                    f"The endotracheal tube tip is {cm} cm above the carina.",
                ),
            )
        )
    if "central_line" in labels.devices:
        sentences.append(
            _pick(
                rng,
                (
                    "Right internal jugular central venous catheter terminates in the SVC.",
                    "A right internal jugular line has its tip in the SVC.",
                ),
            )
        )
    if "ng_tube" in labels.devices:
        sentences.append(
            _pick(
                rng,
                (
                    "Enteric tube courses below the diaphragm with the tip in the stomach.",
                    "A nasogastric tube terminates in the stomach.",
                ),
            )
        )
    if "pacemaker" in labels.devices:
        sentences.append(
            _pick(
                rng,
                (
                    "Left chest wall pacemaker with leads in the right atrium and right ventricle.",
                    "A left-sided pacemaker is present with leads in the right heart.",
                ),
            )
        )
    return sentences


def _lung_sentences(labels: PhantomLabels, rng: np.random.Generator) -> list[str]:
    sentences: list[str] = []
    if labels.consolidation is not None:
        side, zone = labels.consolidation.side, labels.consolidation.zone
        sentences.append(
            _pick(
                rng,
                (
                    f"Consolidation in the {side} {zone} lobe.",
                    f"There is a focal consolidation in the {side} {zone} lobe.",
                    f"Airspace opacity in the {side} {zone} lobe, concerning for pneumonia.",
                ),
            )
        )
    if labels.edema:
        sentences.append(
            _pick(
                rng,
                (
                    "Perihilar haziness consistent with pulmonary edema.",
                    "There is mild pulmonary edema.",
                    "Interstitial and perihilar opacities suggest pulmonary edema.",
                ),
            )
        )
    if labels.atelectasis is not None:
        side = labels.atelectasis
        sentences.append(
            _pick(
                rng,
                (
                    f"Linear atelectasis at the {side} lung base.",
                    f"Plate-like atelectasis in the {side} lower lung.",
                ),
            )
        )
    if not sentences:
        sentences.append(
            _pick(
                rng,
                (
                    "The lungs are clear.",
                    "Lungs are clear without focal consolidation.",
                    "No focal consolidation.",
                ),
            )
        )
    return sentences


def _pleural_sentences(labels: PhantomLabels, rng: np.random.Generator) -> list[str]:
    effusion, ptx = labels.effusion, labels.pneumothorax
    if effusion is None and ptx is None:
        return [
            _pick(
                rng,
                (
                    "No pleural effusion or pneumothorax.",
                    "There is no pleural effusion or pneumothorax.",
                ),
            )
        ]
    sentences: list[str] = []
    if effusion is not None:
        size = _SIZE_WORD[effusion.size]
        if effusion.side == "bilateral":
            sentences.append(
                _pick(
                    rng,
                    (
                        f"{size} bilateral pleural effusions.",
                        f"There are {size.lower()} bilateral pleural effusions.",
                    ),
                )
            )
        else:
            sentences.append(
                _pick(
                    rng,
                    (
                        f"{size} {effusion.side} pleural effusion.",
                        f"There is a {size.lower()} {effusion.side} pleural effusion.",
                    ),
                )
            )
    else:
        sentences.append("No pleural effusion.")
    if ptx is not None:
        size = _SIZE_WORD[ptx.size]
        sentences.append(
            _pick(
                rng,
                (
                    f"{size} {ptx.side} pneumothorax.",
                    f"There is a {size.lower()} {ptx.side} pneumothorax.",
                    f"{size} {ptx.side} pneumothorax with a visible pleural line.",
                ),
            )
        )
    else:
        sentences.append("No pneumothorax.")
    return sentences


def _heart_sentence(labels: PhantomLabels, rng: np.random.Generator) -> str:
    if labels.cardiomegaly:
        return _pick(
            rng,
            (
                "The heart is enlarged.",
                "Cardiomegaly is present.",
                "The cardiac silhouette is enlarged.",
            ),
        )
    return _pick(
        rng,
        (
            "Heart size is normal.",
            "The heart is normal in size.",
            "The cardiac silhouette is normal in size.",
        ),
    )


def _impression(labels: PhantomLabels, rng: np.random.Generator) -> str:
    parts: list[str] = []
    if labels.pneumothorax is not None:
        parts.append(
            f"{_SIZE_WORD[labels.pneumothorax.size]} {labels.pneumothorax.side} pneumothorax."
        )
    if labels.consolidation is not None:
        c = labels.consolidation
        parts.append(
            _pick(
                rng,
                (
                    f"{c.side.capitalize()} {c.zone} lobe consolidation, possibly pneumonia.",
                    f"{c.side.capitalize()} {c.zone} lobe pneumonia.",
                ),
            )
        )
    if labels.edema:
        parts.append("Pulmonary edema.")
    if labels.effusion is not None:
        e = labels.effusion
        if e.side == "bilateral":
            parts.append(f"{_SIZE_WORD[e.size]} bilateral pleural effusions.")
        else:
            parts.append(f"{_SIZE_WORD[e.size]} {e.side} pleural effusion.")
    if labels.cardiomegaly:
        parts.append("Cardiomegaly.")
    if labels.atelectasis is not None:
        parts.append(f"{labels.atelectasis.capitalize()} basilar atelectasis.")
    if not parts:
        parts.append(
            _pick(
                rng,
                ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality."),
            )
        )
    if labels.devices:
        parts.append("Support devices as described.")
    return " ".join(parts)


@dataclass(frozen=True)
class Report:
    """A templated report."""

    findings: str
    impression: str

    @property
    def text(self) -> str:
        """``"FINDINGS: ... IMPRESSION: ..."`` as the synthetic model is trained to write."""
        return f"{FINDINGS_HEADER} {self.findings} {IMPRESSION_HEADER} {self.impression}"


def write_report(labels: PhantomLabels, rng: np.random.Generator | int = 0) -> Report:
    """Write a report for a phantom.

    Parameters
    ----------
    labels
        Ground truth of the phantom.
    rng
        Random generator (or seed) choosing among equivalent phrasings.

    Returns
    -------
    Report
    """
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    sentences = [
        *_device_sentences(labels, generator),
        *_lung_sentences(labels, generator),
        *_pleural_sentences(labels, generator),
        _heart_sentence(labels, generator),
    ]
    return Report(findings=" ".join(sentences), impression=_impression(labels, generator))


# --------------------------------------------------------------------------------------------
# Reading findings back from text (for agreement scoring)
# --------------------------------------------------------------------------------------------

_NEGATION = re.compile(r"\b(no|without|negative for)\b")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class ReadFindings:
    """Findings named positively in a report (sides as written)."""

    cardiomegaly: bool
    effusion: str | None
    pneumothorax: str | None
    consolidation: str | None
    edema: bool
    atelectasis: str | None
    devices: frozenset[str]


def _side_in(sentence: str) -> str | None:
    if "bilateral" in sentence:
        return "bilateral"
    has_left = re.search(r"\bleft\b", sentence) is not None
    has_right = re.search(r"\bright\b", sentence) is not None
    if has_left and has_right:
        return "bilateral"
    if has_left:
        return "left"
    if has_right:
        return "right"
    return "unspecified"


def read_findings(text: str) -> ReadFindings:
    """Extract positive findings from a report written in the synthetic vocabulary.

    A sentence that contains a negation word (``no``, ``without``, ``negative for``) does not
    count as positive for what it names. Only the FINDINGS section is read when present.

    Parameters
    ----------
    text
        Generated or reference report.

    Returns
    -------
    ReadFindings
    """
    body = text
    lowered_full = text.lower()
    start = lowered_full.find(FINDINGS_HEADER.lower())
    end = lowered_full.find(IMPRESSION_HEADER.lower())
    if start >= 0:
        body = text[start + len(FINDINGS_HEADER) : end if end > start else None]
    cardiomegaly = edema = False
    effusion = pneumothorax = consolidation = atelectasis = None
    devices: set[str] = set()
    for raw in _SENTENCE.split(body.strip()):
        sentence = raw.lower()
        negated = _NEGATION.search(sentence) is not None
        if "endotracheal" in sentence:
            devices.add("ett")
        if "jugular" in sentence or "central venous" in sentence:
            devices.add("central_line")
        if "enteric" in sentence or "nasogastric" in sentence:
            devices.add("ng_tube")
        if "pacemaker" in sentence:
            devices.add("pacemaker")
        if negated:
            continue
        if "cardiomegaly" in sentence or "enlarged" in sentence:
            cardiomegaly = True
        if "effusion" in sentence:
            effusion = _side_in(sentence)
        if "pneumothorax" in sentence:
            pneumothorax = _side_in(sentence)
        if "consolidation" in sentence or "airspace opacity" in sentence:
            consolidation = _side_in(sentence)
        if "edema" in sentence:
            edema = True
        if "atelectasis" in sentence:
            atelectasis = _side_in(sentence)
    return ReadFindings(
        cardiomegaly=cardiomegaly,
        effusion=effusion,
        pneumothorax=pneumothorax,
        consolidation=consolidation,
        edema=edema,
        atelectasis=atelectasis,
        devices=frozenset(devices),
    )


__all__ = [
    "FINDINGS_HEADER",
    "IMPRESSION_HEADER",
    "INDICATIONS",
    "ReadFindings",
    "Report",
    "read_findings",
    "write_report",
]
