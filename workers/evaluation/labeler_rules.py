"""Load and compile the report labeler's phrase tables (``workers/evaluation/rules/*.toml``).

The tables are data: mention phrases, exclusions and size anchors per observation
(``observations.toml``) and negation / uncertainty cues with their scope (``cues.toml``).
This module turns them into compiled regular expressions once per process.
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


@dataclass(frozen=True)
class CueRules:
    """Compiled cue phrases (see ``cues.toml`` for their scope)."""

    clause_boundaries: re.Pattern[str]
    pseudo_negation: re.Pattern[str]
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


def load_rules(rules_dir: Path = RULES_DIR) -> LabelerRules:
    """Read and compile the phrase tables in ``rules_dir``.

    Parameters
    ----------
    rules_dir
        Folder with ``observations.toml`` and ``cues.toml``.

    Returns
    -------
    LabelerRules
        The compiled tables.

    Raises
    ------
    RulesError
        If an observation name is unknown or a pattern does not compile.
    """
    observations_table = tomllib.loads((rules_dir / "observations.toml").read_text("utf-8"))
    cues_table = tomllib.loads((rules_dir / "cues.toml").read_text("utf-8"))
    attributes = observations_table["attributes"]
    per_observation = {
        name: _observation_rules(name, table, attributes)
        for name, table in observations_table["observations"].items()
    }
    # "also_uncertain_when" on observation A lists phrases that make A uncertain.
    rules: list[ObservationRules] = []
    for name, compiled in per_observation.items():
        table = observations_table["observations"][name]
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


__all__ = ["CueRules", "LabelerRules", "ObservationRules", "RULES_DIR", "RulesError",
           "default_rules", "load_rules"]
