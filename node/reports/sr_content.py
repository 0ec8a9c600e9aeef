"""What a report says, who made it, and its SR content tree (TID 2000-shaped).

:class:`ReportContent`, :class:`ModelProvenance` and :class:`Verifier` validate their values
when constructed, so that a bad value fails where it is made rather than deep inside the SR
encoder. :func:`build_content_tree` turns them into highdicom content items following
``dicom_templates/chest_xr_report.toml``; :func:`read_report_content` reads them back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    ContainerContentItem,
    ContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    LanguageOfContentItemAndDescendants,
    ObservationContext,
    ObserverContext,
    PersonObserverIdentifyingAttributes,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import PersonName

from node.reports.sr_template import (
    PRESENCE_VALUES,
    CodeSpec,
    Presence,
    ReportTemplate,
    load_report_template,
)
from node.storage import is_valid_uid

CONTAINS = RelationshipTypeValues.CONTAINS
HAS_CONCEPT_MOD = RelationshipTypeValues.HAS_CONCEPT_MOD

# Control characters that DICOM text (ST, LT, UT) does not allow: all C0 controls but
# LF, FF and CR; DEL; the C1 controls. ESC is left out too: it means nothing in UTF-8.
_FORBIDDEN_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_FORBIDDEN_IN_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
_BLANKS = str.maketrans({"\t": " ", "\v": " "})


def clean_text(value: str, what: str) -> str:
    """Return ``value`` fit for a DICOM UT value, or raise.

    Tabs and vertical tabs become spaces (DICOM text allows neither) and surrounding
    whitespace is removed (trailing spaces are padding in DICOM and do not survive a round
    trip). Line breaks, accents and any script are kept.

    Raises
    ------
    TypeError
        If ``value`` is not a string.
    ValueError
        If it holds another control character or cannot be encoded as UTF-8.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    text = value.translate(_BLANKS).strip()
    bad = _FORBIDDEN_IN_TEXT.search(text)
    if bad:
        raise ValueError(f"{what} contains control character {bad.group()!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not encodable as UTF-8: {exc.reason}") from exc
    return text


def check_long_string(value: str, what: str, *, max_chars: int = 64) -> str:
    """Check a single-line value for an LO/SH-like element (no control chars, no ``\\``).

    Raises
    ------
    ValueError
        If the value is empty, too long, or has a control character or backslash.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > max_chars:
        raise ValueError(f"{what} is longer than {max_chars} characters")
    if _FORBIDDEN_IN_LINE.search(value):
        raise ValueError(f"{what} must not contain control characters or backslashes")
    return value


def check_person_name(value: str, what: str) -> str:
    """Check a DICOM PN value written as ``Family^Given^Middle^Prefix^Suffix``.

    Raises
    ------
    ValueError
        If it has no ``^`` (a lone word is ambiguous), more than five components, a
        component over 64 characters, a control character or a backslash.
    """
    if not isinstance(value, str) or "^" not in value:
        raise ValueError(f"{what} must be a DICOM person name like 'Family^Given', got {value!r}")
    if _FORBIDDEN_IN_LINE.search(value):
        raise ValueError(f"{what} must not contain control characters or backslashes")
    for group in value.split("="):
        components = group.split("^")
        if len(components) > 5 or any(len(c) > 64 for c in components):
            raise ValueError(f"{what}: at most 5 components of at most 64 characters")
    if not value.replace("^", "").replace("=", "").strip():
        raise ValueError(f"{what} has no name in it")
    return value


@dataclass(frozen=True)
class ReportContent:
    """What a report says.

    Parameters
    ----------
    findings, impression
        Narrative text of the two sections (either may be empty, not both). Tabs become
        spaces and surrounding whitespace is removed; see :func:`clean_text`.
    observations
        Presence of the CheXpert observations the report mentions, keyed by observation name
        (``"Pleural Effusion"``; case, ``_`` and ``-`` do not matter). Stored under the
        canonical names, in code table order.
    urgent
        Whether the report is flagged for urgent attention.
    flags
        Triage flags (short texts, e.g. ``"pneumothorax"``), in order.
    degeneracy
        Why the model's text is degenerate, in words (empty for an ordinary draft); the
        draft SR then carries a notice saying so.

    Raises
    ------
    ValueError
        On an unknown observation (the message lists the valid ones), an unknown presence,
        empty findings and impression, an empty flag, or text DICOM cannot carry.
    """

    findings: str
    impression: str
    observations: Mapping[str, Presence] = field(default_factory=dict)
    urgent: bool = False
    flags: Sequence[str] = ()
    degeneracy: Sequence[str] = ()

    def __post_init__(self) -> None:
        template = load_report_template()
        findings = clean_text(self.findings, "findings")
        impression = clean_text(self.impression, "impression")
        if not findings and not impression:
            raise ValueError("a report needs findings or an impression")
        if not isinstance(self.urgent, bool):
            raise TypeError("urgent must be a bool")
        if not isinstance(self.observations, Mapping):
            raise TypeError("observations must be a mapping of observation name to presence")
        resolved: dict[str, Presence] = {}
        for name, presence in self.observations.items():
            spec = template.observation(str(name))
            if presence not in PRESENCE_VALUES:
                valid = ", ".join(PRESENCE_VALUES)
                raise ValueError(f"presence of {spec.name!r} is {presence!r}; valid: {valid}")
            if spec.name in resolved:
                raise ValueError(f"observation {spec.name!r} is given twice")
            resolved[spec.name] = presence
        ordered = {n: resolved[n] for n in template.observation_names if n in resolved}
        if isinstance(self.flags, str):
            raise TypeError("flags must be a sequence of strings, not a string")
        flags = tuple(clean_text(f, "flag") for f in self.flags)
        if any(not f for f in flags):
            raise ValueError("flags must not be empty")
        if isinstance(self.degeneracy, str):
            raise TypeError("degeneracy must be a sequence of strings, not a string")
        object.__setattr__(self, "degeneracy",
                           tuple(clean_text(d, "degeneracy") for d in self.degeneracy if d))
        object.__setattr__(self, "findings", findings)
        object.__setattr__(self, "impression", impression)
        object.__setattr__(self, "observations", MappingProxyType(ordered))
        object.__setattr__(self, "flags", flags)


@dataclass(frozen=True)
class ModelProvenance:
    """The model that drafted a report (from its bundle manifest).

    Parameters
    ----------
    name, version, manufacturer
        Identity of the model (LO values, at most 64 characters each).
    device_uid
        The bundle's Device UID; a new one whenever the model changes.
    synthetic
        Whether it is a synthetic demonstration model (its drafts then say so).
    """

    name: str
    version: str
    manufacturer: str
    device_uid: str
    synthetic: bool

    def __post_init__(self) -> None:
        check_long_string(self.name, "model name")
        check_long_string(self.version, "model version")
        check_long_string(self.manufacturer, "model manufacturer")
        if not isinstance(self.device_uid, str) or not is_valid_uid(self.device_uid):
            raise ValueError(f"model device UID {self.device_uid!r} is not a valid DICOM UID")
        if not isinstance(self.synthetic, bool):
            raise TypeError("synthetic must be a bool")


DEFAULT_IDENTIFIER_SCHEME = "99RADNODEUSER"


@dataclass(frozen=True)
class Verifier:
    """The radiologist who verifies (signs) a report.

    Parameters
    ----------
    name
        DICOM person name, ``Family^Given`` (Verifying Observer Name, Person Observer Name).
    organization
        Verifying Organization (LO, at most 64 characters).
    identifier
        The person's identifier at the node (person id or username): the code value of the
        Verifying Observer Identification Code Sequence.
    identifier_scheme
        Coding scheme designator of ``identifier``.
    login_name
        Written as "Person Observer's Login Name" when given.
    """

    name: str
    organization: str
    identifier: str
    identifier_scheme: str = DEFAULT_IDENTIFIER_SCHEME
    login_name: str | None = None

    def __post_init__(self) -> None:
        check_person_name(self.name, "verifier name")
        check_long_string(self.organization, "verifier organization")
        check_long_string(self.identifier, "verifier identifier")
        if self.identifier != self.identifier.strip():
            raise ValueError("verifier identifier must not start or end with spaces")
        check_long_string(self.identifier_scheme, "verifier identifier scheme", max_chars=16)
        if self.login_name is not None:
            check_long_string(self.login_name, "verifier login name")

    @property
    def display_name(self) -> str:
        """The name in reading order (``Given Family``), at most 64 characters."""
        person = PersonName(self.name)
        parts = (person.name_prefix, person.given_name, person.middle_name,
                 person.family_name, person.name_suffix)
        return " ".join(p for p in parts if p)[:64]

    def identification_code(self) -> CodeSpec:
        """The Verifying Observer Identification Code: identifier, scheme, display name."""
        return CodeSpec(self.identifier, self.identifier_scheme, self.display_name)


def _text(code: CodeSpec, value: str, relationship: RelationshipTypeValues) -> TextContentItem:
    return TextContentItem(name=code.concept(), value=value, relationship_type=relationship)


def _section(code: CodeSpec, children: Sequence[ContentItem]) -> ContainerContentItem:
    section = ContainerContentItem(
        name=code.concept(), is_content_continuous=False, relationship_type=CONTAINS
    )
    section.ContentSequence = ContentSequence(children)
    return section


def _items(template: ContentSequence) -> list[ContentItem]:
    """The content items of a highdicom template, as a plain list."""
    return [item for item in template]


def _observer_context(model: ModelProvenance, verifier: Verifier | None,
                      template: ReportTemplate) -> ObservationContext:
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=model.device_uid,
            name=model.name,
            manufacturer_name=model.manufacturer,
            model_name=model.name,
        ),
    )
    person = None
    if verifier is not None:
        person = ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(
                name=verifier.name,
                login_name=verifier.login_name,
                organization_name=verifier.organization,
                role_in_procedure=template.codes["verifier_role"].concept(),
            ),
        )
    return ObservationContext(observer_person_context=person, observer_device_context=device)


def build_content_tree(
    template: ReportTemplate,
    content: ReportContent,
    model: ModelProvenance,
    *,
    verifier: Verifier | None,
    notices: Iterable[str],
    amendment_reason: str | None = None,
) -> ContainerContentItem:
    """Build the root CONTAINER of a chest radiograph report.

    Parameters
    ----------
    template
        The report template (codes and structure).
    content
        What the report says.
    model
        The drafting model: device observer and algorithm identification.
    verifier
        The radiologist, written as person observer; ``None`` for a draft.
    notices
        Texts written as "Comment" items before the sections (draft warning, ...).
    amendment_reason
        Why an amendment was made, written as a "Reason for amendment" TEXT item after the
        notices; ``None`` for drafts and first signatures.

    Returns
    -------
    highdicom.sr.ContainerContentItem
        The document root, ready for ``highdicom.sr.ComprehensiveSR(content=...)``.
    """
    c = template.codes
    root = ContainerContentItem(
        name=c["root"].concept(), is_content_continuous=False,
        template_id=template.root_template_id,
    )
    items: list[ContentItem] = []
    items.extend(_items(LanguageOfContentItemAndDescendants(language=c["language"].concept())))
    items.extend(_items(_observer_context(model, verifier, template)))
    items.extend(_items(AlgorithmIdentification(
        name=model.name, version=model.version, manufacturer=model.manufacturer
    )))
    items.extend(_text(c["comment"], notice, CONTAINS) for notice in notices)
    if amendment_reason is not None:
        items.append(_text(c["amendment_reason"], amendment_reason, CONTAINS))
    if content.findings:
        items.append(_section(c["findings_section"],
                              [_text(c["finding"], content.findings, CONTAINS)]))
    if content.impression:
        items.append(_section(c["impressions_section"],
                              [_text(c["impression"], content.impression, CONTAINS)]))
    if content.observations:
        coded = [
            CodeContentItem(
                name=template.observation(name).code.concept(),
                value=template.presence[presence].concept(),
                relationship_type=CONTAINS,
            )
            for name, presence in content.observations.items()
        ]
        items.append(_section(c["observations_section"], coded))
    triage: list[ContentItem] = [CodeContentItem(
        name=c["triage_priority"].concept(),
        value=(c["urgent"] if content.urgent else c["routine"]).concept(),
        relationship_type=CONTAINS,
    )]
    triage.extend(_text(c["triage_flag"], flag, CONTAINS) for flag in content.flags)
    items.append(_section(c["triage_section"], triage))
    root.ContentSequence = ContentSequence(items)
    return root


def concept_key(code_item: Dataset) -> tuple[str, str]:
    """``(scheme, value)`` of a code sequence item (short, long or URN code value)."""
    value = (code_item.get("CodeValue") or code_item.get("LongCodeValue")
             or code_item.get("URNCodeValue") or "")
    return (str(code_item.get("CodingSchemeDesignator", "")), str(value))


def _name_key(item: Dataset) -> tuple[str, str]:
    return concept_key(item.ConceptNameCodeSequence[0])


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence", []))


def read_report_content(sr: Dataset, template: ReportTemplate | None = None) -> ReportContent:
    """Read what a radnode report says back from its SR dataset.

    Parameters
    ----------
    sr
        An SR written by :mod:`node.reports` (a pydicom dataset or a highdicom SR object).
    template
        The template it was written with; the packaged one by default.

    Returns
    -------
    ReportContent

    Raises
    ------
    ValueError
        If the document is not a radnode chest radiograph report, or holds an observation
        or presence code the template does not know.
    """
    template = template or load_report_template()
    c = template.codes
    if "ContentSequence" not in sr or concept_key(sr.ConceptNameCodeSequence[0]) != c["root"].key:
        raise ValueError("not a radnode chest radiograph report (root concept differs)")
    findings: list[str] = []
    impressions: list[str] = []
    observations: dict[str, Presence] = {}
    urgent = False
    flags: list[str] = []
    for section in _children(sr):
        if section.get("ValueType") != "CONTAINER":
            continue
        key = _name_key(section)
        for item in _children(section):
            item_key = _name_key(item)
            if key == c["findings_section"].key and item_key == c["finding"].key:
                findings.append(str(item.TextValue))
            elif key == c["impressions_section"].key and item_key == c["impression"].key:
                impressions.append(str(item.TextValue))
            elif key == c["observations_section"].key and item.ValueType == "CODE":
                spec = template.observation_by_code(*item_key)
                presence = template.presence_by_code(*concept_key(item.ConceptCodeSequence[0]))
                if spec is None or presence is None:
                    raise ValueError(f"unknown coded observation {item_key} in the report")
                observations[spec.name] = presence
            elif key == c["triage_section"].key and item_key == c["triage_priority"].key:
                urgent = concept_key(item.ConceptCodeSequence[0]) == c["urgent"].key
            elif key == c["triage_section"].key and item_key == c["triage_flag"].key:
                flags.append(str(item.TextValue))
    return ReportContent(
        findings="\n".join(findings), impression="\n".join(impressions),
        observations=observations, urgent=urgent, flags=tuple(flags),
    )


def read_amendment_reason(sr: Dataset, template: ReportTemplate | None = None) -> str | None:
    """The "Reason for amendment" of an SR written by :mod:`node.reports`, or ``None``.

    Parameters
    ----------
    sr
        A radnode report SR (pydicom dataset or highdicom SR object).
    template
        The template it was written with; the packaged one by default.
    """
    template = template or load_report_template()
    wanted = template.codes["amendment_reason"].key
    for item in _children(sr):
        if item.get("ValueType") == "TEXT" and _name_key(item) == wanted:
            return str(item.TextValue)
    return None


__all__ = [
    "DEFAULT_IDENTIFIER_SCHEME",
    "ModelProvenance",
    "ReportContent",
    "Verifier",
    "build_content_tree",
    "check_long_string",
    "check_person_name",
    "clean_text",
    "concept_key",
    "read_amendment_reason",
    "read_report_content",
]
