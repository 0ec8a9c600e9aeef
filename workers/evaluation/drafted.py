"""Draft a folder of studies with a model bundle and pair the drafts with reference reports.

This is what ``radnode eval --draft-from FOLDER`` runs before evaluating: each sub-folder of
``FOLDER`` holding DICOM files is one study, named by the folder; the reference reports come
from a jsonl file of ``{"id", "reference"}`` objects with the same ids. Generation settings
(temperature, top_p, …) and whether the indication goes into the prompt can be overridden,
so a site can compare two settings on the same studies.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

from workers.evaluation.harness import EvalRecord, PredictionsError
from workers.inference.bundle import LoadedBundle
from workers.inference.drafting import DraftResult, dicom_files_in, draft_study
from workers.inference.manifest import GenerationSpec

GENERATION_KEYS: dict[str, type[int] | type[float]] = {
    "temperature": float,
    "top_p": float,
    "max_new_tokens": int,
    "repetition_penalty": float,
    "top_k": int,
}
"""Generation settings ``--generation`` accepts, with their types."""


def parse_generation_overrides(text: str) -> dict[str, float | int]:
    """Parse ``"temperature=0.2,top_p=0.9"`` into generation overrides.

    Raises
    ------
    ValueError
        On an unknown key, a missing ``=`` or a value of the wrong type.
    """
    overrides: dict[str, float | int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"generation setting {item!r} must look like key=value")
        if key not in GENERATION_KEYS:
            raise ValueError(f"unknown generation setting {key!r}; known: "
                             + ", ".join(GENERATION_KEYS))
        try:
            overrides[key] = GENERATION_KEYS[key](value.strip())
        except ValueError as exc:
            raise ValueError(f"generation setting {key}: {value.strip()!r} is not a "
                             f"{GENERATION_KEYS[key].__name__}") from exc
    return overrides


def read_references(path: Path) -> dict[str, str]:
    """Read ``{"id", "reference"}`` jsonl into id → reference report.

    Raises
    ------
    PredictionsError
        On malformed lines or repeated ids.
    """
    references: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            record_id, reference = str(data["id"]), data["reference"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PredictionsError(f"{path}:{number}: expected an object with id and "
                                   "reference") from exc
        if not isinstance(reference, str):
            raise PredictionsError(f"{path}:{number}: reference must be a string")
        if record_id in references:
            raise PredictionsError(f"{path}:{number}: id {record_id!r} appears twice")
        references[record_id] = reference
    return references


def study_folders(root: Path) -> dict[str, list[Path]]:
    """Sub-folders of ``root`` holding DICOM Part 10 files: folder name → files."""
    studies: dict[str, list[Path]] = {}
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        files = dicom_files_in([folder])
        if files:
            studies[folder.name] = files
    return studies


def report_text(draft: DraftResult) -> str:
    """The drafted text compared with the reference: findings, then impression if any."""
    return " ".join(part for part in (draft.findings.strip(), draft.impression.strip()) if part)


def draft_folder(root: Path, references: Mapping[str, str], bundle: LoadedBundle, *,
                 generation: GenerationSpec | None = None, use_indication: bool = True,
                 seed: int = 0, progress: Callable[[str, float], None] | None = None
                 ) -> list[EvalRecord]:
    """Draft every study of ``root`` that has a reference report.

    Parameters
    ----------
    root
        Folder of study sub-folders.
    references
        Study id (sub-folder name) → reference report.
    bundle
        Loaded model.
    generation
        Decoding settings; the bundle's by default.
    use_indication
        Put the indication from the DICOM headers into the prompt (the bundle's prompt with
        indication); ``False`` drafts every study with the plain question.
    seed
        Sampling seed.
    progress
        Called as ``(message, fraction)`` after each study.

    Raises
    ------
    PredictionsError
        If a reference has no study folder, or no study has a reference.
    """
    studies = study_folders(root)
    missing = sorted(set(references) - set(studies))
    if missing:
        raise PredictionsError(f"no study folder under {root} for reference ids "
                               + ", ".join(missing[:5]) + (" …" if len(missing) > 5 else ""))
    selected = [(study_id, files) for study_id, files in studies.items() if study_id in references]
    if not selected:
        raise PredictionsError(f"no study folder under {root} has a reference report")
    records = []
    for number, (study_id, files) in enumerate(selected, start=1):
        draft = draft_study(files, bundle, generation=generation, seed=seed,
                            indication=None if use_indication else "")
        records.append(EvalRecord(study_id, references[study_id], report_text(draft)))
        if progress is not None:
            progress(f"drafting {number}/{len(selected)}", number / len(selected))
    return records


__all__ = ["GENERATION_KEYS", "draft_folder", "parse_generation_overrides",
           "read_references", "report_text", "study_folders"]
