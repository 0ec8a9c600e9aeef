"""Draft one study: choose the frontal image, preprocess it, encode, generate, split sections.

:func:`draft_study` is the plain function behind the worker task and the ``radnode draft``
command. It reads only the files it is given and never logs patient identifiers or the
indication text.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from workers.inference.bundle import LoadedBundle
from workers.inference.degeneracy import DraftQuality, assess_draft
from workers.inference.frontal import FrontalChoice, select_frontal
from workers.inference.manifest import GenerationSpec
from workers.inference.preprocess import DisplayImage, load_display_image, to_model_input

log = logging.getLogger(__name__)

_FINDINGS = re.compile(r"\bFINDINGS\s*:", re.IGNORECASE)
_IMPRESSION = re.compile(r"\bIMPRESSION\s*:", re.IGNORECASE)

# Where the reason for the examination is looked for, most specific first.
INDICATION_ATTRIBUTES: tuple[str, ...] = (
    "ReasonForTheRequestedProcedure",
    "RequestAttributesSequence.ReasonForTheRequestedProcedure",
    "ReasonForRequestedProcedureCodeSequence.CodeMeaning",
    "ReasonForStudy",
    "AdmittingDiagnosesDescription",
    "RequestedProcedureDescription",
)


class MixedStudyError(ValueError):
    """The files belong to more than one patient or study: no one report can cover them.
    Deterministic, so never retried."""


def _check_one_patient(headers: Sequence[Dataset]) -> None:
    """Raise :class:`MixedStudyError` unless every header names one patient and study."""
    patients = {(str(h.get("PatientID", "") or ""), str(h.get("IssuerOfPatientID", "") or ""))
                for h in headers}
    studies = {str(h.get("StudyInstanceUID", "") or "") for h in headers}
    if len(patients) > 1 or len(studies) > 1:
        raise MixedStudyError(
            f"the study's images belong to {len(patients)} patients and {len(studies)} "
            "studies; one report cannot cover them")


class NoFrontalImageError(ValueError):
    """The study has no image a frontal-view drafting model can use (permanent)."""


@dataclass(frozen=True)
class ImageUsed:
    """The image the draft was made from and why it was chosen."""

    sop_instance_uid: str | None
    path: str
    view: str | None
    view_source: str
    reason: str
    display: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelUsed:
    """Identity of the model bundle that wrote the draft."""

    name: str
    version: str
    architecture: str
    device_uid: str
    synthetic: bool
    licence: str
    intended_use: str


@dataclass(frozen=True)
class DraftTimings:
    """Wall-clock milliseconds of each stage."""

    decode_ms: float
    preprocess_ms: float
    encode_ms: float
    generate_ms: float
    total_ms: float


@dataclass(frozen=True)
class DraftTokens:
    """Token accounting of the generation."""

    prompt: int
    generated: int
    stopped_on_eos: bool


@dataclass(frozen=True)
class DraftResult:
    """A drafted report for one study.

    Attributes
    ----------
    findings, impression
        Report sections; ``impression`` is empty for findings-only models.
    raw_text
        The generated text as decoded.
    indication
        Indication given to the model (``None`` when none was used).
    indication_source
        Attribute the indication was read from, ``"argument"``, or ``None``.
    image_used, model, timings, tokens
        Provenance and accounting.
    quality
        Whether the text is degenerate (loops, no end token, misplaced headers) and why.
    """

    findings: str
    impression: str
    raw_text: str
    indication: str | None
    indication_source: str | None
    image_used: ImageUsed
    model: ModelUsed
    timings: DraftTimings
    tokens: DraftTokens
    quality: DraftQuality = field(default_factory=DraftQuality)

    @property
    def degenerate(self) -> bool:
        """Whether the generated text is degenerate (see :mod:`~workers.inference.degeneracy`)."""
        return self.quality.degenerate

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary (what ``radnode draft`` prints)."""
        data = asdict(self)
        data["timings"] = {k: round(float(v), 2) for k, v in data["timings"].items()}
        data["quality"] = {"degenerate": self.quality.degenerate,
                           "reasons": self.quality.reason_values(),
                           "details": list(self.quality.details)}
        return data


def split_report_sections(text: str, output_sections: str) -> tuple[str, str]:
    """Split generated text into ``(findings, impression)``.

    Parameters
    ----------
    text
        Generated report text.
    output_sections
        ``"findings_impression"``: cut at ``IMPRESSION:`` (and drop a leading ``FINDINGS:``);
        ``"findings"``: everything is findings (a stray ``FINDINGS:`` header is dropped).

    Returns
    -------
    tuple of str
        Stripped findings and impression; the impression is empty when absent.
    """
    body = text.strip()
    findings_match = _FINDINGS.search(body)
    if output_sections != "findings_impression":
        if findings_match is not None and findings_match.start() == 0:
            body = body[findings_match.end() :]
        return body.strip(), ""
    impression_match = _IMPRESSION.search(body)
    if impression_match is None:
        findings_part, impression_part = body, ""
    else:
        findings_part = body[: impression_match.start()]
        impression_part = body[impression_match.end() :]
    findings_match = _FINDINGS.search(findings_part)
    if findings_match is not None:
        findings_part = findings_part[findings_match.end() :]
    return findings_part.strip(), impression_part.strip()


def dicom_files_in(paths: Sequence[Path]) -> list[Path]:
    """Expand files and folders into the DICOM Part 10 files they hold (``DICM`` marker)."""
    found: list[Path] = []
    for path in paths:
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for candidate in candidates:
            with candidate.open("rb") as handle:
                handle.seek(128)
                if handle.read(4) == b"DICM":
                    found.append(candidate)
    return found


def _attribute_text(ds: Dataset, path: str) -> str | None:
    keyword, _, inner = path.partition(".")
    value = ds.get(keyword)
    if value is None:
        return None
    if inner:
        for item in value:
            text = _attribute_text(item, inner)
            if text:
                return text
        return None
    text = " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    text = text.strip()
    return text or None


def indication_from_headers(headers: Sequence[Dataset]) -> tuple[str | None, str | None]:
    """Find the reason for the examination in the study's headers.

    Parameters
    ----------
    headers
        Datasets, the chosen image first.

    Returns
    -------
    tuple
        ``(indication, attribute)`` for the first non-empty attribute of
        :data:`INDICATION_ATTRIBUTES` (searched in that order over all headers), or
        ``(None, None)``.
    """
    for attribute in INDICATION_ATTRIBUTES:
        for ds in headers:
            text = _attribute_text(ds, attribute)
            if text:
                return text, attribute
    return None, None


def _read_headers(paths: Sequence[Path]) -> tuple[list[Path], list[Dataset]]:
    usable: list[Path] = []
    headers: list[Dataset] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            log.warning("skipping unreadable file in study: %s (%s)", path.name, type(exc).__name__)
            continue
        usable.append(path)
        headers.append(ds)
    return usable, headers


def model_used(bundle: LoadedBundle) -> ModelUsed:
    """Identity block of a loaded bundle."""
    m = bundle.manifest
    return ModelUsed(
        name=m.name,
        version=m.version,
        architecture=m.architecture,
        device_uid=m.device_uid,
        synthetic=m.synthetic,
        licence=m.licence,
        intended_use=m.intended_use,
    )


def draft_study(
    paths: Sequence[Path | str],
    bundle: LoadedBundle,
    *,
    indication: str | None = None,
    generation: GenerationSpec | None = None,
    seed: int | None = None,
) -> DraftResult:
    """Draft a report for the study made of ``paths``.

    Parameters
    ----------
    paths
        DICOM files of one study (any number of images; non-DICOM files are skipped).
    bundle
        The loaded model.
    indication
        Reason for the examination; by default read from the headers (see
        :data:`INDICATION_ATTRIBUTES`). Leading and trailing whitespace is stripped, as
        upstream strips the question; pass ``""`` to draft without one.
    generation
        Decoding override; defaults to the bundle's.
    seed
        Sampling seed (irrelevant for greedy decoding).

    Returns
    -------
    DraftResult

    Raises
    ------
    MixedStudyError
        When the files belong to more than one patient or study.
    NoFrontalImageError
        When no file is a usable frontal (or view-less) image.
    ImageDecodeError
        When the chosen image's pixel data cannot be decoded.
    """
    started = time.perf_counter()
    usable, headers = _read_headers([Path(p) for p in paths])
    _check_one_patient(headers)
    choice: FrontalChoice = select_frontal(headers)
    if choice.index is None:
        raise NoFrontalImageError(f"no usable image for drafting: {choice.reason}")
    path = usable[choice.index]
    chosen_header = headers[choice.index]

    indication_source: str | None
    if indication is None:
        others = [h for i, h in enumerate(headers) if i != choice.index]
        indication, indication_source = indication_from_headers([chosen_header, *others])
    else:
        indication, indication_source = indication.strip(), "argument"
        if not indication:
            indication, indication_source = None, None

    t_decode = time.perf_counter()
    display: DisplayImage = load_display_image(path)
    t_preprocess = time.perf_counter()
    pixels = to_model_input(display.pixels, bundle.manifest.preprocess)
    t_encode = time.perf_counter()
    embeds = bundle.encode(pixels[None])
    t_generate = time.perf_counter()
    result = bundle.generate(embeds[0], indication=indication, generation=generation, seed=seed)
    finished = time.perf_counter()

    findings, impression = split_report_sections(result.text, bundle.manifest.output_sections)
    timings = DraftTimings(
        decode_ms=(t_preprocess - t_decode) * 1000.0,
        preprocess_ms=(t_encode - t_preprocess) * 1000.0,
        encode_ms=(t_generate - t_encode) * 1000.0,
        generate_ms=(finished - t_generate) * 1000.0,
        total_ms=(finished - started) * 1000.0,
    )
    log.info(
        "study drafted",
        extra={
            "sop_instance_uid": display.sop_instance_uid,
            "view": choice.view,
            "model": bundle.manifest.name,
            "new_tokens": result.new_tokens,
            "total_ms": round(timings.total_ms, 1),
        },
    )
    return DraftResult(
        findings=findings,
        impression=impression,
        raw_text=result.text,
        indication=indication,
        indication_source=indication_source,
        image_used=ImageUsed(
            sop_instance_uid=display.sop_instance_uid,
            path=str(path),
            view=choice.view,
            view_source=choice.source,
            reason=choice.reason,
            display=display.describe(),
        ),
        model=model_used(bundle),
        timings=timings,
        tokens=DraftTokens(
            prompt=result.prompt_tokens,
            generated=result.new_tokens,
            stopped_on_eos=result.stopped_on_eos,
        ),
        quality=assess_draft(result.text, stopped_on_eos=result.stopped_on_eos),
    )


__all__ = [
    "DraftResult",
    "DraftTimings",
    "DraftTokens",
    "dicom_files_in",
    "INDICATION_ATTRIBUTES",
    "ImageUsed",
    "ModelUsed",
    "MixedStudyError",
    "NoFrontalImageError",
    "draft_study",
    "indication_from_headers",
    "model_used",
    "split_report_sections",
]
