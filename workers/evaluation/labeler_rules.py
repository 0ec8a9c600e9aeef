"""Load and compile the report labeler's phrase tables (``workers/evaluation/rules/*.toml``).

The tables are data: mention phrases, exclusions and size anchors per observation
(``observations.toml``) and negation / uncertainty cues with their scope (``cues.toml``).
This module turns them into compiled regular expressions once per process. A site may add
or replace phrases in its own folder of rule files (``[quality] labeler_rules_dir``)
without editing the shipped tables.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from node.observations import Observation

RULES_DIR = Path(__file__).resolve().parent / "rules"
"""Folder holding ``observations.toml`` and ``cues.toml``."""

_GAP_STOP_WORDS = (
    "and there", "but", "with", "without", "while", "although", "which", "there", "no", "or",
)


class RulesError(ValueError):
    """A phrase table is malformed (unknown observation, bad regular expression)."""


@dataclass(frozen=True)
class ObservationRules:
    """Compiled phrases of one observation.

    Attributes
    ----------
    observation
        The observation these phrases name.
    mentions
        Phrases naming the observation; cues decide their label.
    negative_mentions
        Phrases that name the observation as normal or absent ("normal heart size").
    exclusions
        Phrases containing a mention that do not name the observation.
    uncertain_elsewhere
        Phrases that make *this* observation uncertain when they are positive or uncertain
        (CheXpert: heart failure makes Cardiomegaly uncertain).
    """

    observation: Observation
    mentions: tuple[re.Pattern[str], ...]
    negative_mentions: tuple[re.Pattern[str], ...]
    exclusions: tuple[re.Pattern[str], ...]
    uncertain_elsewhere: tuple[re.Pattern[str], ...]

    @property
    def screen(self) -> re.Pattern[str]:
        """One pattern matching wherever any mention phrase might (a fast first test)."""
        return _screen(self.mentions + self.negative_mentions)


@lru_cache(maxsize=256)
def _screen(patterns: tuple[re.Pattern[str], ...]) -> re.Pattern[str]:
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{p.pattern})" for p in patterns))


@dataclass(frozen=True)
class CueRules:
    """Compiled cue phrases (see ``cues.toml`` for their scope)."""

    clause_boundaries: re.Pattern[str]
    pseudo_negation: re.Pattern[str]
    pseudo_uncertainty: re.Pattern[str]
    negated_uncertainty: re.Pattern[str]
    pre_negation: re.Pattern[str]
    post_negation: re.Pattern[str]
    pre_uncertainty: re.Pattern[str]
    post_uncertainty: re.Pattern[str]
    post_affirmation: re.Pattern[str]


@dataclass(frozen=True)
class LabelerRules:
    """Everything the labeler needs: per-observation phrases and the cues."""

    observations: tuple[ObservationRules, ...]
    cues: CueRules


def _compile(patterns: list[str], where: str) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise RulesError(f"{where}: bad pattern {pattern!r}: {exc}") from exc
    return tuple(compiled)


def _union(patterns: list[str], where: str) -> re.Pattern[str]:
    _compile(patterns, where)
    return re.compile("|".join(f"(?:{p})" for p in patterns))


def _size_phrases(anchors: list[str], enlarged: list[str], normal: list[str]) -> tuple[
        list[str], list[str]]:
    """Phrases joining an organ anchor and a size attribute, in either order.

    A gap of a few words may separate them, but never another size attribute or a word that
    starts a new clause, so each anchor pairs with its nearest attribute.
    """
    attributes = "|".join(enlarged + normal)
    stop = "|".join(_GAP_STOP_WORDS)
    gap_word = rf"(?!(?:{attributes}|{stop})\b)[\w'-]+"
    anchor = "|".join(f"(?:{a})" for a in anchors)

    def both_orders(attrs: list[str]) -> list[str]:
        attr = "|".join(attrs)
        return [
            rf"(?:{anchor})(?:\s+{gap_word}){{0,5}}?\s+(?:{attr})\b",
            rf"\b(?:{attr})(?:\s+{gap_word}){{0,3}}?\s+(?:{anchor})",
        ]

    return both_orders(enlarged), both_orders(normal)


def _observation_rules(name: str, table: dict[str, Any],
                       attributes: dict[str, list[str]]) -> ObservationRules:
    try:
        observation = Observation(name)
    except ValueError as exc:
        raise RulesError(f"observations.toml: unknown observation {name!r}") from exc
    mentions = list(table.get("mentions", []))
    negative = list(table.get("normal_mentions", []))
    anchors = list(table.get("anchors", []))
    if anchors:
        enlarged, normal = _size_phrases(anchors, attributes["enlarged"], attributes["normal"])
        mentions += enlarged
        negative += normal
    where = f"observations.toml [{name}]"
    return ObservationRules(
        observation=observation,
        mentions=_compile(mentions, where),
        negative_mentions=_compile(negative, where),
        exclusions=_compile(list(table.get("exclusions", [])), where),
        uncertain_elsewhere=(),
    )


_OBSERVATION_LISTS = ("mentions", "exclusions", "normal_mentions", "anchors",
                      "also_uncertain_when")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RulesError(f"{path}: {exc}") from exc


def _phrase_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RulesError(f"{where}: expected a list of regular expressions")
    return list(value)


def _replaced(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> set[str]:
    replace = _phrase_list(table.get("replace", []), f"{where} replace")
    unknown = set(replace) - set(allowed)
    if unknown:
        raise RulesError(f"{where}: cannot replace {sorted(unknown)}; lists: {list(allowed)}")
    return set(replace)


def _merge_site_file(path: Path, observations: dict[str, dict[str, Any]],
                     cues: dict[str, Any]) -> None:
    """Add (or, for the lists named in ``replace``, substitute) a site file's phrases."""
    site = _read_toml(path)
    unknown_sections = set(site) - {"observations", "cues"}
    if unknown_sections:
        raise RulesError(f"{path}: unknown sections {sorted(unknown_sections)}; "
                         "expected [observations.\"<name>\"] and [cues]")
    for name, table in site.get("observations", {}).items():
        where = f"{path} [observations.{name!r}]"
        if name not in observations:
            raise RulesError(f"{where}: unknown observation; valid: "
                             + ", ".join(o.value for o in Observation))
        unknown = set(table) - set(_OBSERVATION_LISTS) - {"replace"}
        if unknown:
            raise RulesError(f"{where}: unknown keys {sorted(unknown)}; "
                             f"lists: {list(_OBSERVATION_LISTS)}")
        replace = _replaced(table, _OBSERVATION_LISTS, where)
        shipped = observations[name]
        for key in _OBSERVATION_LISTS:
            if key in table or key in replace:
                phrases = _phrase_list(table.get(key, []), f"{where} {key}")
                _compile(phrases, f"{where} {key}")
                shipped[key] = phrases if key in replace else [*shipped.get(key, []), *phrases]
    cue_table = site.get("cues", {})
    cue_keys = tuple(CueRules.__dataclass_fields__)
    unknown = set(cue_table) - set(cue_keys) - {"replace"}
    if unknown:
        raise RulesError(f"{path} [cues]: unknown keys {sorted(unknown)}; lists: {list(cue_keys)}")
    replace = _replaced(cue_table, cue_keys, f"{path} [cues]")
    for key in cue_keys:
        if key in cue_table or key in replace:
            phrases = _phrase_list(cue_table.get(key, []), f"{path} [cues] {key}")
            _compile(phrases, f"{path} [cues] {key}")
            cues[key] = phrases if key in replace else [*cues[key], *phrases]


def load_rules(rules_dir: Path = RULES_DIR, site_dir: Path | None = None) -> LabelerRules:
    """Read and compile the phrase tables in ``rules_dir``, with a site's additions.

    Parameters
    ----------
    rules_dir
        Folder with ``observations.toml`` and ``cues.toml``.
    site_dir
        Optional folder of site rule files (``*.toml``, read in name order). Each may hold
        ``[observations."<name>"]`` tables (``mentions``, ``exclusions``,
        ``normal_mentions``, ``anchors``, ``also_uncertain_when``) and a ``[cues]`` table
        (any list of ``cues.toml``). Phrases are added to the shipped lists; the lists a
        table names in ``replace = [...]`` are replaced instead.

    Returns
    -------
    LabelerRules
        The compiled tables.

    Raises
    ------
    RulesError
        If a file cannot be read, an observation, section or list name is unknown, a
        list is not a list of strings, or a pattern does not compile.
    """
    observations_table = _read_toml(rules_dir / "observations.toml")
    cues_table = _read_toml(rules_dir / "cues.toml")
    observation_tables: dict[str, dict[str, Any]] = {
        name: dict(table) for name, table in observations_table["observations"].items()}
    if site_dir is not None:
        if not site_dir.is_dir():
            raise RulesError(f"site rules folder {site_dir} does not exist")
        for path in sorted(site_dir.glob("*.toml")):
            _merge_site_file(path, observation_tables, cues_table)
    attributes = observations_table["attributes"]
    rules: list[ObservationRules] = []
    for name, table in observation_tables.items():
        compiled = _observation_rules(name, table, attributes)
        # "also_uncertain_when" on observation A lists phrases that make A uncertain.
        extra = _compile(list(table.get("also_uncertain_when", [])), f"observations.toml [{name}]")
        rules.append(ObservationRules(
            observation=compiled.observation,
            mentions=compiled.mentions,
            negative_mentions=compiled.negative_mentions,
            exclusions=compiled.exclusions,
            uncertain_elsewhere=extra,
        ))
    cues = CueRules(**{
        key: _union(list(cues_table[key]), f"cues.toml {key}")
        for key in CueRules.__dataclass_fields__
    })
    return LabelerRules(observations=tuple(rules), cues=cues)


@lru_cache(maxsize=1)
def default_rules() -> LabelerRules:
    """The shipped phrase tables, compiled once per process."""
    return load_rules()


@lru_cache(maxsize=8)
def site_rules(site_dir: Path) -> LabelerRules:
    """The shipped phrase tables with a site folder's additions, compiled once per folder.

    Raises
    ------
    RulesError
        As :func:`load_rules`.
    """
    return load_rules(RULES_DIR, site_dir)


__all__ = ["CueRules", "LabelerRules", "ObservationRules", "RULES_DIR", "RulesError",
           "default_rules", "load_rules", "site_rules"]
