"""Choose the frontal (PA / AP) image of a chest study from its headers.

Report-drafting models of the LLaVA-Rad / CXR-LLaVA kind were trained on frontal images only,
so the node must feed them the frontal image of a study and say why it picked it.

The view of each image is read from the first source that says something:

1. (0018,5101) View Position (``PA``, ``AP``, ``LL``, ``RL``, ``LATERAL`` ...);
2. (0054,0220) View Code Sequence (SNOMED CT / legacy SNOMED-RT codes of CID 4010, or the code
   meaning text);
3. free text in Series Description, Protocol Name, Image Comments, Acquisition Device
   Processing Description, Study Description (words such as ``PA``, ``AP``, ``FRONTAL``,
   ``LAT``, ``LATERAL``).

(0020,0062) Image Laterality is not evidence of a frontal view (it names the side of a paired
body part), but lateral projections named anywhere are excluded. Among the remaining images a PA
view is preferred over an AP view, then an unqualified frontal view, then an image with no view
information; obliques and decubitus views come last.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pydicom.dataset import Dataset


class View(IntEnum):
    """Projection of one image, ordered by preference for drafting."""

    PA = 0
    AP = 1
    FRONTAL = 2
    UNKNOWN = 3
    OTHER = 4
    LATERAL = 9


# ViewPosition values (PS3.3 C.8.11.5 / C.8.19.6) mapped to a view class.
_VIEW_POSITIONS: dict[str, View] = {
    "PA": View.PA,
    "AP": View.AP,
    "LL": View.LATERAL,
    "RL": View.LATERAL,
    "LAT": View.LATERAL,
    "LATERAL": View.LATERAL,
    "RLD": View.OTHER,
    "LLD": View.OTHER,
    "RLO": View.OTHER,
    "LLO": View.OTHER,
    "RAO": View.OTHER,
    "LAO": View.OTHER,
    "RPO": View.OTHER,
    "LPO": View.OTHER,
}

# View Code Sequence codes (CID 4010 "DX View"): SNOMED CT and their legacy SNOMED-RT forms.
_VIEW_CODES: dict[str, View] = {
    "272479007": View.PA,  # postero-anterior
    "R-10214": View.PA,
    "R-40888": View.PA,
    "399348003": View.AP,  # antero-posterior
    "R-10206": View.AP,
    "399033003": View.FRONTAL,  # frontal
    "399067008": View.LATERAL,  # lateral
    "R-102CD": View.LATERAL,
    "399173006": View.LATERAL,  # left lateral
    "R-10236": View.LATERAL,
    "399198007": View.LATERAL,  # right lateral
    "R-10232": View.LATERAL,
}

_TEXT_ATTRIBUTES: tuple[str, ...] = (
    "SeriesDescription",
    "ProtocolName",
    "ImageComments",
    "AcquisitionDeviceProcessingDescription",
    "StudyDescription",
)

_NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "DOC", "REG", "SEG"})

_LATERAL_TEXT = re.compile(r"\b(LAT|LATERAL|LATERALE|LL|RL|SEITLICH|PROFIL)\b")
_PA_TEXT = re.compile(
    r"(?<![A-Z])(PA|P\.A\.?|P\s*[/-]\s*A|POSTERO[\s-]?ANTERIOR|POSTEROANTERIOR)(?![A-Z])"
)
_AP_TEXT = re.compile(
    r"(?<![A-Z])(AP|A\.P\.?|A\s*[/-]\s*P|ANTERO[\s-]?POSTERIOR|ANTEROPOSTERIOR|SUPINE|PORTABLE)(?![A-Z])"
)
_FRONTAL_TEXT = re.compile(r"\b(FRONTAL|FRONT)\b")
_OTHER_TEXT = re.compile(r"\b(OBLIQUE|OBL|DECUBITUS|DECUB|LORDOTIC)\b")


@dataclass(frozen=True)
class ViewEvidence:
    """The view of one image and the attribute that told us."""

    view: View
    source: str
    detail: str


@dataclass(frozen=True)
class FrontalChoice:
    """The image chosen for drafting.

    Attributes
    ----------
    index
        Position of the chosen header in the input, or ``None`` when no usable image exists.
    view
        ``"PA"``, ``"AP"``, ``"FRONTAL"``, ``"UNKNOWN"``, ``"OTHER"``; ``None`` with no choice.
    source
        Attribute the view was read from (``ViewPosition``, ``ViewCodeSequence``, a text
        attribute, or ``none``).
    reason
        One sentence explaining the choice.
    """

    index: int | None
    view: str | None
    source: str
    reason: str


def _get(header: Dataset | Mapping[str, Any], keyword: str) -> Any:
    if isinstance(header, Dataset):
        return header.get(keyword)
    return header.get(keyword)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def _code_items(header: Dataset | Mapping[str, Any]) -> list[Mapping[str, Any] | Dataset]:
    seq = _get(header, "ViewCodeSequence")
    if not seq:
        return []
    return [item for item in seq if item is not None]


def _view_from_code(item: Mapping[str, Any] | Dataset) -> ViewEvidence | None:
    value = _text(_get(item, "CodeValue") or _get(item, "LongCodeValue")).strip()
    meaning = _text(_get(item, "CodeMeaning")).strip()
    if value in _VIEW_CODES:
        return ViewEvidence(_VIEW_CODES[value], "ViewCodeSequence", f"{value} ({meaning})")
    lowered = meaning.lower()
    if "lateral" in lowered and "oblique" not in lowered:
        return ViewEvidence(View.LATERAL, "ViewCodeSequence", meaning)
    if "oblique" in lowered:
        return ViewEvidence(View.OTHER, "ViewCodeSequence", meaning)
    if lowered.startswith("postero-anterior") or lowered == "pa":
        return ViewEvidence(View.PA, "ViewCodeSequence", meaning)
    if lowered.startswith("antero-posterior") or lowered == "ap":
        return ViewEvidence(View.AP, "ViewCodeSequence", meaning)
    if lowered == "frontal":
        return ViewEvidence(View.FRONTAL, "ViewCodeSequence", meaning)
    return None


def _view_from_text(text: str) -> View | None:
    upper = text.upper().replace("_", " ")
    if _LATERAL_TEXT.search(upper):
        return View.LATERAL
    if _OTHER_TEXT.search(upper):
        return View.OTHER
    if _PA_TEXT.search(upper):
        return View.PA
    if _AP_TEXT.search(upper):
        return View.AP
    if _FRONTAL_TEXT.search(upper):
        return View.FRONTAL
    return None


def classify_view(header: Dataset | Mapping[str, Any]) -> ViewEvidence:
    """Return the view of one image and where it was read from.

    Parameters
    ----------
    header
        A pydicom dataset (pixel data not needed) or a mapping keyed by DICOM keywords.

    Returns
    -------
    ViewEvidence
        ``View.UNKNOWN`` with source ``"none"`` when nothing in the header names a view.
    """
    position = _text(_get(header, "ViewPosition")).strip().upper()
    if position in _VIEW_POSITIONS:
        return ViewEvidence(_VIEW_POSITIONS[position], "ViewPosition", position)
    for item in _code_items(header):
        evidence = _view_from_code(item)
        if evidence is not None:
            return evidence
    for keyword in _TEXT_ATTRIBUTES:
        text = _text(_get(header, keyword))
        view = _view_from_text(text) if text else None
        if view is not None:
            return ViewEvidence(view, keyword, text.strip())
    return ViewEvidence(View.UNKNOWN, "none", "")


def _is_original(header: Dataset | Mapping[str, Any]) -> bool:
    image_type = _get(header, "ImageType")
    if not image_type:
        return True
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    first = str(values[0]).split("\\")[0].strip().upper()
    return first != "DERIVED"


def _is_image(header: Dataset | Mapping[str, Any]) -> bool:
    modality = _text(_get(header, "Modality")).strip().upper()
    if modality in _NON_IMAGE_MODALITIES:
        return False
    rows = _get(header, "Rows")
    return rows is None or int(rows) > 0


def select_frontal(headers: Sequence[Dataset | Mapping[str, Any]]) -> FrontalChoice:
    """Pick the image of a study to draft from.

    Parameters
    ----------
    headers
        One header per image of the study, in a stable order (e.g. series then instance
        number). Pydicom datasets or keyword mappings.

    Returns
    -------
    FrontalChoice
        The best image (PA before AP before unqualified frontal before unknown before
        oblique/decubitus; lateral views never), ties broken by ORIGINAL before DERIVED image
        type and then input order; ``index`` is ``None`` when every image is lateral or not an
        image.
    """
    candidates: list[tuple[int, int, int, ViewEvidence]] = []
    laterals = 0
    for index, header in enumerate(headers):
        if not _is_image(header):
            continue
        evidence = classify_view(header)
        if evidence.view is View.LATERAL:
            laterals += 1
            continue
        candidates.append((int(evidence.view), 0 if _is_original(header) else 1, index, evidence))
    if not candidates:
        if laterals:
            reason = f"no frontal image: all {laterals} image(s) are lateral views"
        else:
            reason = "no image in the study"
        return FrontalChoice(index=None, view=None, source="none", reason=reason)
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    _, _, index, evidence = candidates[0]
    name = evidence.view.name
    if evidence.source == "none":
        reason = "no view information in the header; first non-lateral image used"
    else:
        where = f"{evidence.source} {evidence.detail!r}" if evidence.detail else evidence.source
        reason = f"{name} view from {where}"
    others = len(candidates) - 1
    if others or laterals:
        reason += f" (chosen over {others} other frontal-candidate and {laterals} lateral image(s))"
    return FrontalChoice(index=index, view=name, source=evidence.source, reason=reason)


__all__ = ["FrontalChoice", "View", "ViewEvidence", "classify_view", "select_frontal"]
