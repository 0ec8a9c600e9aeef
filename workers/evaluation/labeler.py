"""A rule-based CheXpert-style labeler of report text.

The labeler reads a free-text chest X-ray report and gives each of the 14 CheXpert
observations one of positive / negative / uncertain / not mentioned. It follows the three
stages of the CheXpert labeler, without any model:

1. **Mention extraction** — phrases from ``rules/observations.toml`` (with exclusions, and
   size phrases such as "heart size is enlarged" built from organ anchors and attributes).
2. **Classification** of each mention by cues from ``rules/cues.toml`` whose scope is the
   sentence clause: the nearest pre-cue before the mention ("no", "cannot exclude",
   "possible"), a post-cue after it in the same phrase ("… is not seen", "… has resolved",
   "… is suspected"), and a negation word inside a size phrase ("heart is not enlarged").
   Alternatives joined by "or" are uncertain ("atelectasis or pneumonia").
3. **Aggregation** per observation over the report: positive beats uncertain beats negative;
   heart failure makes Cardiomegaly uncertain unless it is positive; No Finding is positive
   exactly when no observation other than Support Devices is positive or uncertain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from node.observations import Mention, Observation, ReportLabels
from workers.evaluation.labeler_rules import LabelerRules, ObservationRules, default_rules

_SENTENCE_END = re.compile(
    r"(?<!\bvs\.)(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\bdr\.)(?<=[.!?])(?=\s|$)|\n+"
)
_LIST_CONJUNCTION = re.compile(r"^\s*(?:,\s*)?(?:(?:and|or|and/or|as well as)\s+)?"
                               r"(?:(?:the|a|an|of|small|large|left|right|bilateral|mild|"
                               r"moderate|severe|trace|focal|minimal|significant|definite|"
                               r"new|acute|basilar|apical|lobe|lower|upper|middle|pleural|"
                               r"pulmonary|\w+al)\s+){0,3}$")
_ALTERNATIVE = re.compile(r"^\s*(?:,\s*)?(?:or|and/or)\s+(?:[\w-]+\s+){0,2}$")
_NEGATION_WORD = re.compile(r"\b(?:not|no)\b|n't\b")


class CueKind(StrEnum):
    """What a cue does to the mentions in its scope."""

    NEGATION = "negation"
    UNCERTAINTY = "uncertainty"
    AFFIRMATION = "affirmation"


@dataclass(frozen=True)
class Span:
    """A character range ``[start, end)`` of a clause."""

    start: int
    end: int

    def overlaps(self, other: Span) -> bool:
        """Whether the two ranges share at least one character."""
        return self.start < other.end and other.start < self.end

    def contains(self, other: Span) -> bool:
        """Whether ``other`` lies wholly inside this range."""
        return self.start <= other.start and other.end <= self.end


@dataclass(frozen=True)
class Cue:
    """A negation, uncertainty or affirmation phrase found in a clause."""

    kind: CueKind
    span: Span


@dataclass(frozen=True)
class LabelledMention:
    """One mention of an observation in a report, with its label and where it was found.

    Attributes
    ----------
    observation
        The observation mentioned.
    mention
        Its label from the cues around it.
    sentence
        The (lower-case, whitespace-normalised) clause the mention is in.
    text
        The words of the mention.
    """

    observation: Observation
    mention: Mention
    sentence: str
    text: str


@dataclass(frozen=True)
class _Found:
    observation: Observation
    span: Span
    normal: bool
    flags_uncertain: tuple[Observation, ...] = ()


def split_sentences(text: str) -> list[str]:
    """Split report text into lower-case sentences with single spaces.

    Parameters
    ----------
    text
        Free report text; section headers ("FINDINGS:") and numbered lists are fine.

    Returns
    -------
    list of str
        Non-empty sentences in order.
    """
    sentences = []
    for piece in _SENTENCE_END.split(text):
        sentence = " ".join(piece.lower().split())
        if sentence:
            sentences.append(sentence)
    return sentences


def split_clauses(sentence: str, rules: LabelerRules) -> list[str]:
    """Split a sentence at clause boundaries (";", "but", ", there", "and the", …)."""
    clauses = []
    start = 0
    for boundary in rules.cues.clause_boundaries.finditer(sentence):
        clauses.append(sentence[start:boundary.start()])
        start = boundary.start() if boundary.group(0)[0].isalpha() else boundary.end()
        if boundary.group(0).startswith(","):
            start = boundary.start() + 1
    clauses.append(sentence[start:])
    return [c.strip(" ,") for c in clauses if c.strip(" ,")]


def _spans(pattern: re.Pattern[str], text: str) -> list[Span]:
    return [Span(m.start(), m.end()) for m in pattern.finditer(text) if m.end() > m.start()]


def _find_cues(clause: str, rules: LabelerRules) -> tuple[list[Cue], list[Cue]]:
    """Pre-cues and post-cues of a clause; negations inside uncertainty cues are dropped."""
    cues = rules.cues
    negated = _spans(cues.negated_uncertainty, clause)
    uncertain_pre = [s for s in _spans(cues.pre_uncertainty, clause)
                     if not any(n.contains(s) for n in negated)]
    uncertain_post = [s for s in _spans(cues.post_uncertainty, clause)
                      if not any(n.contains(s) for n in negated)]
    shields = uncertain_pre + uncertain_post + _spans(cues.pseudo_negation, clause)

    def negations(pattern: re.Pattern[str]) -> list[Span]:
        return [s for s in _spans(pattern, clause) if not any(u.overlaps(s) for u in shields)]

    pre = [Cue(CueKind.UNCERTAINTY, s) for s in uncertain_pre]
    pre += [Cue(CueKind.NEGATION, s) for s in negations(cues.pre_negation) + negated]
    post = [Cue(CueKind.UNCERTAINTY, s) for s in uncertain_post]
    post += [Cue(CueKind.NEGATION, s) for s in negations(cues.post_negation)]
    post += [Cue(CueKind.AFFIRMATION, s) for s in _spans(cues.post_affirmation, clause)]
    return pre, post


def _find_mentions(clause: str, rules: LabelerRules) -> list[_Found]:
    """Mentions of every observation in a clause, longest first where they overlap."""
    found: list[_Found] = []
    for observation_rules in rules.observations:
        found.extend(_mentions_of(observation_rules, clause))
    flags = [
        _Found(r.observation, span, normal=False, flags_uncertain=(r.observation,))
        for r in rules.observations for p in r.uncertain_elsewhere for span in _spans(p, clause)
    ]
    found.sort(key=lambda f: (f.span.start, -f.span.end))
    return found + flags


def _mentions_of(rules: ObservationRules, clause: str) -> list[_Found]:
    excluded = [s for p in rules.exclusions for s in _spans(p, clause)]
    candidates = [(s, False) for p in rules.mentions for s in _spans(p, clause)]
    candidates += [(s, True) for p in rules.negative_mentions for s in _spans(p, clause)]
    candidates = [(s, n) for s, n in candidates if not any(e.overlaps(s) for e in excluded)]
    # Of overlapping mentions of one observation keep the longest (size phrases over anchors).
    candidates.sort(key=lambda c: (-(c[0].end - c[0].start), c[0].start))
    kept: list[tuple[Span, bool]] = []
    for span, normal in candidates:
        if not any(k.overlaps(span) for k, _ in kept):
            kept.append((span, normal))
    return [_Found(rules.observation, span, normal) for span, normal in kept]


def _post_scope(clause: str, found: _Found, mentions: list[_Found]) -> Span:
    """Where post-cues of a mention may lie: up to a comma or a mention not in its list."""
    end = len(clause)
    comma = clause.find(",", found.span.end)
    if comma != -1:
        end = comma
    for other in mentions:
        if other.span.start >= found.span.end and other.span.start < end:
            between = clause[found.span.end:other.span.start]
            if not _LIST_CONJUNCTION.match(between):
                end = other.span.start
                break
    return Span(found.span.end, end)


def _classify(clause: str, found: _Found, mentions: list[_Found], pre: list[Cue],
              post: list[Cue]) -> Mention:
    """Label one mention from the cues around it (see the module docstring)."""
    if found.normal:
        return Mention.NEGATIVE
    inside = clause[found.span.start:found.span.end]
    if any(c.kind is CueKind.UNCERTAINTY and found.span.contains(c.span) for c in pre + post):
        return Mention.UNCERTAIN
    if _NEGATION_WORD.search(inside):
        return Mention.NEGATIVE
    before = [c for c in pre if c.span.end <= found.span.start]
    nearest = max(before, key=lambda c: c.span.end, default=None)
    scope = _post_scope(clause, found, mentions)
    after = sorted((c for c in post if scope.contains(c.span)), key=lambda c: c.span.start)
    following = after[0] if after else None
    if nearest is not None and nearest.kind is CueKind.UNCERTAINTY:
        return Mention.UNCERTAIN
    if nearest is not None and nearest.kind is CueKind.NEGATION:
        between = [m for m in mentions
                   if nearest.span.end <= m.span.start and m.span.end <= found.span.start
                   and m.observation is not found.observation]
        affirmed = following is not None and following.kind is CueKind.AFFIRMATION
        if not (between and affirmed):
            return Mention.NEGATIVE
    if following is not None and following.kind is CueKind.NEGATION:
        return Mention.NEGATIVE
    if following is not None and following.kind is CueKind.UNCERTAINTY:
        return Mention.UNCERTAIN
    if _is_alternative(clause, found, mentions):
        return Mention.UNCERTAIN
    return Mention.POSITIVE


def _is_alternative(clause: str, found: _Found, mentions: list[_Found]) -> bool:
    """Whether the mention is one side of "X or Y" with another observation."""
    for other in mentions:
        if other.observation is found.observation or other.flags_uncertain:
            continue
        if other.span.start >= found.span.end:
            gap = clause[found.span.end:other.span.start]
        elif other.span.end <= found.span.start:
            gap = clause[other.span.end:found.span.start]
        else:
            continue
        if _ALTERNATIVE.match(gap):
            return True
    return False


def label_mentions(text: str, rules: LabelerRules | None = None) -> list[LabelledMention]:
    """Every mention in a report with its label, before aggregation.

    Parameters
    ----------
    text
        The report (findings and/or impression).
    rules
        Phrase tables; the shipped ones by default.

    Returns
    -------
    list of LabelledMention
        In reading order. Heart-failure phrases appear a second time as an uncertain
        Cardiomegaly mention when they are themselves positive or uncertain.

    Raises
    ------
    TypeError
        If ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"report text must be a string, not {type(text).__name__}")
    rules = rules or default_rules()
    labelled: list[LabelledMention] = []
    for sentence in split_sentences(text):
        for clause in split_clauses(sentence, rules):
            pre, post = _find_cues(clause, rules)
            mentions = _find_mentions(clause, rules)
            plain = [m for m in mentions if not m.flags_uncertain]
            for found in mentions:
                label = _classify(clause, found, plain, pre, post)
                if found.flags_uncertain:
                    if label is Mention.NEGATIVE:
                        continue
                    label = Mention.UNCERTAIN
                labelled.append(LabelledMention(
                    found.observation, label, clause,
                    clause[found.span.start:found.span.end],
                ))
    return labelled


_PRECEDENCE = {Mention.NEGATIVE: 1, Mention.UNCERTAIN: 2, Mention.POSITIVE: 3}


def aggregate(mentions: list[LabelledMention]) -> ReportLabels:
    """Combine mention labels into one label per observation (CheXpert's rules).

    Positive beats uncertain beats negative; No Finding is positive exactly when no
    observation other than Support Devices is positive or uncertain.
    """
    labels: dict[Observation, Mention] = {}
    for item in mentions:
        current = labels.get(item.observation)
        if current is None or _PRECEDENCE[item.mention] > _PRECEDENCE[current]:
            labels[item.observation] = item.mention
    findings = (o for o in Observation
                if o not in (Observation.NO_FINDING, Observation.SUPPORT_DEVICES))
    if not any(labels.get(o) in (Mention.POSITIVE, Mention.UNCERTAIN) for o in findings):
        labels[Observation.NO_FINDING] = Mention.POSITIVE
    else:
        labels.pop(Observation.NO_FINDING, None)
    return ReportLabels(labels)


def label_report(text: str) -> ReportLabels:
    """Label a report with the 14 CheXpert observations.

    Parameters
    ----------
    text
        The report text (findings and/or impression, any casing, several sentences).

    Returns
    -------
    ReportLabels
        One :class:`Mention` per observation.

    Raises
    ------
    TypeError
        If ``text`` is not a string.

    Examples
    --------
    >>> labels = label_report("Heart size is enlarged. No pleural effusion.")
    >>> labels[Observation.CARDIOMEGALY], labels[Observation.PLEURAL_EFFUSION]
    (<Mention.POSITIVE: 'positive'>, <Mention.NEGATIVE: 'negative'>)
    """
    return aggregate(label_mentions(text))


__all__ = ["CueKind", "LabelledMention", "aggregate", "label_mentions", "label_report",
           "split_clauses", "split_sentences"]
