"""The chest radiograph report template, read from ``dicom_templates`` and checked on load.

Everything the SR builder writes that is a choice rather than a rule of DICOM (codes, the
local coding scheme, series descriptions, notices) lives in the TOML files of
:mod:`dicom_templates`; this module turns them into typed, validated objects.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from highdicom.sr import CodedConcept
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage

from dicom_templates import CHEST_XR_REPORT, load_toml

Presence = Literal["present", "absent", "uncertain"]
"""Presence of a CheXpert observation as the labeler states it."""

PRESENCE_VALUES: tuple[Presence, ...] = get_args(Presence)

_SOP_CLASSES = {
    "comprehensive": ComprehensiveSRStorage,
    "comprehensive-3d": Comprehensive3DSRStorage,
}
_REQUIRED_CODES = (
    "root", "language_concept", "language", "findings_section", "finding",
    "impressions_section", "impression", "comment", "amendment_reason", "observations_section",
    "triage_section", "triage_priority", "urgent", "routine", "triage_flag",
    "verifier_role", "contributing_purpose",
)
_REQUIRED_WORDING = (
    "draft_series_description", "synthetic_draft_series_description",
    "verified_series_description", "draft_notice", "synthetic_notice", "amendment_notice",
    "draft_contribution", "final_contribution",
)
_SERIES_DESCRIPTIONS = _REQUIRED_WORDING[:3]
_SCHEME = re.compile(r"^[A-Z0-9_.\-]{1,16}$", re.IGNORECASE)


@dataclass(frozen=True)
class CodeSpec:
    """One coded concept of the template: code value, coding scheme and meaning."""

    value: str
    scheme: str
    meaning: str

    def concept(self) -> CodedConcept:
        """Return the concept as a highdicom :class:`~highdicom.sr.CodedConcept`."""
        return CodedConcept(value=self.value, scheme_designator=self.scheme, meaning=self.meaning)

    @property
    def key(self) -> tuple[str, str]:
        """``(scheme, value)``: what identifies the concept (the meaning does not)."""
        return (self.scheme, self.value)


@dataclass(frozen=True)
class CodingSchemeSpec:
    """A local coding scheme, declared in the Coding Scheme Identification Sequence."""

    designator: str
    name: str
    version: str
    responsible_organization: str


@dataclass(frozen=True)
class ObservationSpec:
    """One CheXpert observation and the concept that codes it."""

    name: str
    code: CodeSpec


@dataclass(frozen=True)
class ReportTemplate:
    """The validated content of ``chest_xr_report.toml`` and its code table."""

    sop_class_uid: str
    root_template_id: str
    manufacturer: str
    model_name: str
    wording: Mapping[str, str]
    codes: Mapping[str, CodeSpec]
    coding_schemes: tuple[CodingSchemeSpec, ...]
    observations: tuple[ObservationSpec, ...]
    presence: Mapping[Presence, CodeSpec]

    def in_language(self, language: CodeSpec | None) -> ReportTemplate:
        """This template declaring ``language`` as the SR's language (itself for ``None``)."""
        if language is None:
            return self
        return replace(self, codes={**self.codes, "language": language})

    @property
    def observation_names(self) -> tuple[str, ...]:
        """The CheXpert observation names, in table order."""
        return tuple(o.name for o in self.observations)

    def observation(self, name: str) -> ObservationSpec:
        """Look an observation up by name (case, ``_`` and ``-`` do not matter).

        Raises
        ------
        ValueError
            If ``name`` is not one of the observations; the message lists them.
        """
        wanted = normalise_observation_name(name)
        for spec in self.observations:
            if normalise_observation_name(spec.name) == wanted:
                return spec
        raise ValueError(
            f"unknown observation {name!r}; valid observations: {', '.join(self.observation_names)}"
        )

    def observation_by_code(self, scheme: str, value: str) -> ObservationSpec | None:
        """Return the observation coded as ``(scheme, value)``, or ``None``."""
        for spec in self.observations:
            if spec.code.key == (scheme, value):
                return spec
        return None

    def presence_by_code(self, scheme: str, value: str) -> Presence | None:
        """Return the presence coded as ``(scheme, value)``, or ``None``."""
        for presence, spec in self.presence.items():
            if spec.key == (scheme, value):
                return presence
        return None

    def coding_scheme(self, designator: str) -> CodingSchemeSpec | None:
        """Return the declared local scheme ``designator``, or ``None``."""
        for scheme in self.coding_schemes:
            if scheme.designator == designator:
                return scheme
        return None

    def all_codes(self) -> list[CodeSpec]:
        """Every code of the template: structure, observations and presence."""
        return [
            *self.codes.values(),
            *(o.code for o in self.observations),
            *self.presence.values(),
        ]


def normalise_observation_name(name: str) -> str:
    """Fold an observation name for lookups: case-insensitive, ``_``/``-`` as spaces."""
    return " ".join(name.replace("_", " ").replace("-", " ").split()).casefold()


def _code(data: Any, where: str) -> CodeSpec:
    if not isinstance(data, dict) or set(data) != {"value", "scheme", "meaning"}:
        raise ValueError(f"{where}: a code needs exactly 'value', 'scheme' and 'meaning'")
    value, scheme, meaning = (str(data[k]) for k in ("value", "scheme", "meaning"))
    if not value or len(value) > 64 or "\\" in value:
        raise ValueError(f"{where}: code value {value!r} is empty, too long or has a backslash")
    if not _SCHEME.match(scheme):
        raise ValueError(f"{where}: coding scheme designator {scheme!r} is not a valid SH")
    if not meaning or len(meaning) > 64 or "\\" in meaning:
        raise ValueError(f"{where}: code meaning {meaning!r} must be 1-64 characters, no '\\'")
    return CodeSpec(value, scheme, meaning)


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"{where}: missing table [{key}]")
    return value


def _parse_observations(data: dict[str, Any], where: str) -> tuple[
    tuple[ObservationSpec, ...], dict[Presence, CodeSpec]
]:
    presence_table = _table(data, "presence", where)
    if set(presence_table) != set(PRESENCE_VALUES):
        raise ValueError(f"{where}: [presence] must define exactly {PRESENCE_VALUES}")
    presence: dict[Presence, CodeSpec] = {
        p: _code(presence_table[p], f"{where} presence.{p}") for p in PRESENCE_VALUES
    }
    entries = data.get("observations")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: no [[observations]]")
    observations: list[ObservationSpec] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"{where}: observation #{index} needs a 'name'")
        observations.append(
            ObservationSpec(entry["name"], _code(entry.get("code"), f"{where} {entry['name']}"))
        )
    names = [normalise_observation_name(o.name) for o in observations]
    codes = [o.code.key for o in observations]
    if len(set(names)) != len(names) or len(set(codes)) != len(codes):
        raise ValueError(f"{where}: observation names and codes must be unique")
    if len({p.key for p in presence.values()}) != len(presence):
        raise ValueError(f"{where}: presence codes must be distinct")
    return tuple(observations), presence


def parse_report_template(
    report: dict[str, Any], observation_table: dict[str, Any]
) -> ReportTemplate:
    """Validate the parsed TOML of a report template and its observation code table.

    Raises
    ------
    ValueError
        On a missing table or key, a malformed code, an over-long series description, or a
        local (``99``) coding scheme that is used but not declared.
    """
    where = CHEST_XR_REPORT
    document = _table(report, "document", where)
    sop_class = document.get("sop_class")
    if sop_class not in _SOP_CLASSES:
        raise ValueError(f"{where}: document.sop_class must be one of {sorted(_SOP_CLASSES)}")
    equipment = _table(report, "equipment", where)
    wording_table = _table(report, "wording", where)
    missing = [k for k in _REQUIRED_WORDING if not isinstance(wording_table.get(k), str)]
    if missing:
        raise ValueError(f"{where}: [wording] lacks {missing}")
    wording = {k: str(wording_table[k]) for k in _REQUIRED_WORDING}
    for key in _SERIES_DESCRIPTIONS:
        if len(wording[key]) > 64:
            raise ValueError(f"{where}: wording.{key} is longer than 64 characters")
    code_table = _table(report, "codes", where)
    missing = [k for k in _REQUIRED_CODES if k not in code_table]
    if missing:
        raise ValueError(f"{where}: [codes] lacks {missing}")
    codes = {k: _code(code_table[k], f"{where} codes.{k}") for k in _REQUIRED_CODES}
    schemes = tuple(
        CodingSchemeSpec(
            designator=str(s["designator"]), name=str(s["name"]), version=str(s["version"]),
            responsible_organization=str(s["responsible_organization"]),
        )
        for s in report.get("coding_schemes", [])
    )
    observations, presence = _parse_observations(observation_table, str(
        _table(report, "observations", where).get("table", "observations")
    ))
    template = ReportTemplate(
        sop_class_uid=str(_SOP_CLASSES[sop_class]),
        root_template_id=str(document.get("root_template_id", "2000")),
        manufacturer=str(equipment["manufacturer"]),
        model_name=str(equipment["model_name"]),
        wording=wording,
        codes=codes,
        coding_schemes=schemes,
        observations=observations,
        presence=presence,
    )
    declared = {s.designator for s in schemes}
    undeclared = sorted(
        {c.scheme for c in template.all_codes() if c.scheme.startswith("99")} - declared
    )
    if undeclared:
        raise ValueError(f"{where}: local coding schemes used but not declared: {undeclared}")
    return template


@functools.cache
def load_report_template() -> ReportTemplate:
    """Load and validate the packaged chest radiograph report template (cached)."""
    report = load_toml(CHEST_XR_REPORT)
    table_name = _table(report, "observations", CHEST_XR_REPORT).get("table")
    if not isinstance(table_name, str):
        raise ValueError(f"{CHEST_XR_REPORT}: observations.table must name a file")
    return parse_report_template(report, load_toml(table_name))


__all__ = [
    "PRESENCE_VALUES",
    "CodeSpec",
    "CodingSchemeSpec",
    "ObservationSpec",
    "Presence",
    "ReportTemplate",
    "load_report_template",
    "normalise_observation_name",
    "parse_report_template",
]
