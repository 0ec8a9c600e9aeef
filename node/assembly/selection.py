"""Selection rules: is a complete study a chest radiograph the node drafts?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from node.config import SelectionSettings
from node.states import IgnoreReason
from workers.inference.frontal import View, classify_view

#: Storage SOP classes that carry no image (SRs, presentation states, KOs…)
#: start with these prefixes; they never count as evidence to draft.
_NON_IMAGE_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.",
                           "1.2.840.10008.5.1.4.1.1.104.", "1.2.840.10008.5.1.4.1.1.9.")

#: Secondary Capture Image Storage and its multi-frame variants
#: (1.2.840.10008.5.1.4.1.1.7 and 1.2.840.10008.5.1.4.1.1.7.1 … .7.4).
_SECONDARY_CAPTURE_SOP = "1.2.840.10008.5.1.4.1.1.7"

@dataclass(frozen=True)
class InstanceFacts:
    """The header facts selection looks at (from the ``instances`` table)."""

    sop_class_uid: str
    modality: str | None
    body_part: str | None
    view_position: str | None
    series_description: str | None
    image_type: str | None = None
    conversion_type: str | None = None


def is_derived(facts: InstanceFacts) -> bool:
    """Whether an instance is a secondary capture or a derived image, not an acquisition.

    A secondary capture SOP class, an Image Type whose first value is ``DERIVED`` or
    whose second is ``SECONDARY``, or any Conversion Type (screenshots, scanned film,
    workstation captures) mark an image a radiologist did not acquire on the patient,
    whatever Modality it is labelled with.
    """
    sop = facts.sop_class_uid
    if sop == _SECONDARY_CAPTURE_SOP or sop.startswith(_SECONDARY_CAPTURE_SOP + "."):
        return True
    if (facts.conversion_type or "").strip():
        return True
    values = [v.strip().upper() for v in (facts.image_type or "").split("\\")]
    return (len(values) > 0 and values[0] == "DERIVED") or (
        len(values) > 1 and values[1] == "SECONDARY"
    )


@dataclass(frozen=True)
class SelectionDecision:
    """Draft or ignore, and why."""

    draft: bool
    reason: str
    ignore_reason: IgnoreReason | None = None


def view_of(facts: InstanceFacts, frontal_views: Sequence[str] = ("PA", "AP")) -> str | None:
    """Return ``"FRONTAL"``, ``"LATERAL"``, ``"OTHER"`` or ``None`` when unknown.

    The view is read by :func:`workers.inference.frontal.classify_view`, the same
    classifier the drafting worker uses to pick its image (ViewPosition decides; the
    series description is the fall-back). A PA or AP view counts as frontal only when
    it is one of ``frontal_views``.
    """
    evidence = classify_view(
        {"ViewPosition": facts.view_position, "SeriesDescription": facts.series_description}
    )
    if evidence.view == View.UNKNOWN:
        return None
    if evidence.view == View.LATERAL:
        return "LATERAL"
    allowed = {view.upper() for view in frontal_views}
    if evidence.view == View.FRONTAL or evidence.view.name in allowed:
        return "FRONTAL"
    return "OTHER"


def decide(instances: Sequence[InstanceFacts], rules: SelectionSettings) -> SelectionDecision:
    """Apply the selection rules to a complete study.

    Parameters
    ----------
    instances
        Facts of every instance in the study.
    rules
        Modalities, body parts and views that qualify.

    Returns
    -------
    SelectionDecision
        ``draft=True`` when at least one CR/DX chest image with a frontal view
        (or, if allowed, an unknown view) is present; laterals stay as evidence.
        Secondary captures and derived images never count (see :func:`is_derived`).
    """
    images = [f for f in instances if not f.sop_class_uid.startswith(_NON_IMAGE_SOP_PREFIXES)]
    if not images:
        return SelectionDecision(False, IgnoreReason.NO_IMAGES.value, IgnoreReason.NO_IMAGES)
    modalities = {m.upper() for m in rules.modalities}
    labelled = [f for f in images if (f.modality or "").upper() in modalities]
    if not labelled:
        return SelectionDecision(
            False, IgnoreReason.NOT_RADIOGRAPHY.value, IgnoreReason.NOT_RADIOGRAPHY
        )
    radiographs = [f for f in labelled if not is_derived(f)]
    if not radiographs:
        return SelectionDecision(
            False, IgnoreReason.DERIVED_ONLY.value, IgnoreReason.DERIVED_ONLY
        )
    body_parts = {b.upper() for b in rules.body_parts}
    chest = [
        f
        for f in radiographs
        if (f.body_part or "").strip().upper() in body_parts
        or (rules.allow_missing_body_part and not (f.body_part or "").strip())
    ]
    if not chest:
        return SelectionDecision(False, IgnoreReason.NOT_CHEST.value, IgnoreReason.NOT_CHEST)
    views = [view_of(f, rules.frontal_views) for f in chest]
    if "FRONTAL" in views:
        frontal = views.count("FRONTAL")
        return SelectionDecision(True, f"{frontal} frontal of {len(chest)} chest images")
    if rules.draft_when_view_unknown and None in views:
        return SelectionDecision(True, "chest image with unknown view (allowed by configuration)")
    return SelectionDecision(
        False, IgnoreReason.NO_FRONTAL_VIEW.value, IgnoreReason.NO_FRONTAL_VIEW
    )
