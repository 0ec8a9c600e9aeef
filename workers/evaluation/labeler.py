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
   exactly when no observation other than Support Devices is positive or uncertain and no
   finding outside the 14 (No Finding's own mention phrases: spine, aorta, hyperinflation,
   granulomas…) is present or possible.
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
_WORD = re.compile(r"\S+")
_NEGATION_WORD = re.compile(r"\b(?:not|no)\b|n't\b")
_NOT_ALTERNATIVES = (Observation.NO_FINDING, Observation.LUNG_OPACITY)
_JOINED_BY_AND = re.compile(r"^\s*(?:,\s*)?and\s+(?!/)(?:[\w-]+\s+){0,3}$")


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
        The words of the mention (lower case).
    start, end
        Where the mention lies in the report text (``text[start:end]``), when known.
    """

    observation: Observation
    mention: Mention
    sentence: str
    text: str
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class _Found:
    observation: Observation
    span: Span
    normal: bool
    flags_uncertain: tuple[Observation, ...] = ()


@dataclass(frozen=True)
class _Sentence:
    """A lower-case, single-spaced sentence and where each of its characters came from."""

    text: str
    offsets: tuple[int, ...]

    def original(self, start: int, end: int) -> tuple[int, int]:
        """The range ``[start, end)`` of this sentence as a range of the report text."""
        return self.offsets[start], self.offsets[end - 1] + 1


def _sentences(text: str) -> list[_Sentence]:
    pieces: list[tuple[int, int]] = []
    position = 0
    for separator in _SENTENCE_END.finditer(text):
        pieces.append((position, separator.start()))
        position = separator.end()
    pieces.append((position, len(text)))
    sentences = []
    for start, end in pieces:
        chars: list[str] = []
        offsets: list[int] = []
        for word in _WORD.finditer(text, start, end):
            if chars:
                chars.append(" ")
                offsets.append(offsets[-1] + 1)
            lower = word.group(0).lower()
            last = word.end() - 1
            chars.append(lower)
            offsets.extend(min(word.start() + i, last) for i in range(len(lower)))
        if chars:
            sentences.append(_Sentence("".join(chars), tuple(offsets)))
    return sentences


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
    return [sentence.text for sentence in _sentences(text)]


def _clause_spans(sentence: str, rules: LabelerRules) -> list[Span]:
    pieces = []
    start = 0
    for boundary in rules.cues.clause_boundaries.finditer(sentence):
        pieces.append(Span(start, boundary.start()))
        start = boundary.start() if boundary.group(0)[0].isalpha() else boundary.end()
        if boundary.group(0).startswith(","):
            start = boundary.start() + 1
    pieces.append(Span(start, len(sentence)))
    spans = []
    for piece in pieces:
        begin, end = piece.start, piece.end
        while begin < end and sentence[begin] in " ,":
            begin += 1
        while end > begin and sentence[end - 1] in " ,":
            end -= 1
        if end > begin:
            spans.append(Span(begin, end))
    return spans


def split_clauses(sentence: str, rules: LabelerRules) -> list[str]:
    """Split a sentence at clause boundaries (";", "but", ", there", "and the", …)."""
    return [sentence[s.start:s.end] for s in _clause_spans(sentence, rules)]


def _spans(pattern: re.Pattern[str], text: str) -> list[Span]:
    return [Span(m.start(), m.end()) for m in pattern.finditer(text) if m.end() > m.start()]


def _find_cues(clause: str, rules: LabelerRules) -> tuple[list[Cue], list[Cue]]:
    """Pre-cues and post-cues of a clause; negations inside uncertainty cues are dropped."""
    cues = rules.cues
    negated = _spans(cues.negated_uncertainty, clause)
    not_uncertain = _spans(cues.pseudo_uncertainty, clause)

    def uncertainties(pattern: re.Pattern[str]) -> list[Span]:
        return [s for s in _spans(pattern, clause)
                if not any(n.contains(s) for n in negated)
                and not any(p.overlaps(s) for p in not_uncertain)]

    uncertain_pre = uncertainties(cues.pre_uncertainty)
    uncertain_post = uncertainties(cues.post_uncertainty)
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
    if not rules.screen.search(clause):
        return []
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
    """Where post-cues of a mention may lie: past the rest of its list ("X, Y and Z have
    cleared"), then up to a comma or a mention not in its list."""
    list_end = found.span.end
    for other in sorted(mentions, key=lambda m: m.span.start):
        if other.span.start < list_end:
            continue
        if not _LIST_CONJUNCTION.match(clause[list_end:other.span.start]):
            break
        list_end = max(list_end, other.span.end)
    end = len(clause)
    comma = clause.find(",", list_end)
    if comma != -1:
        end = comma
    for other in mentions:
        if other.span.start >= list_end and other.span.start < end:
            between = clause[list_end:other.span.start]
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
        # "No effusion and cardiomegaly is present" asserts the second mention; in
        # "no effusion or pneumothorax is seen" the verb belongs to the negated list.
        joined = between and _JOINED_BY_AND.match(clause[between[-1].span.end:found.span.start])
        if not (joined and affirmed):
            return Mention.NEGATIVE
    if following is not None and following.kind is CueKind.NEGATION:
        return Mention.NEGATIVE
    if following is not None and following.kind is CueKind.UNCERTAINTY:
        return Mention.UNCERTAIN
    if _is_alternative(clause, found, mentions):
        return Mention.UNCERTAIN
    return Mention.POSITIVE


def _is_alternative(clause: str, found: _Found, mentions: list[_Found]) -> bool:
    """Whether the mention is one side of "X or Y" with another observation.

    A descriptive lung opacity ("scarring", "infiltrate") is present whichever reading is
    right, so it neither is made uncertain by an alternative nor makes one uncertain.
    """
    if found.observation is Observation.LUNG_OPACITY:
        return False
    for other in mentions:
        if other.observation in _NOT_ALTERNATIVES or other.observation is found.observation \
                or other.flags_uncertain:
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
    for sentence in _sentences(text):
        for clause_span in _clause_spans(sentence.text, rules):
            clause = sentence.text[clause_span.start:clause_span.end]
            pre, post = _find_cues(clause, rules)
            mentions = _find_mentions(clause, rules)
            plain = [m for m in mentions if not m.flags_uncertain]
            for found in mentions:
                label = _classify(clause, found, plain, pre, post)
                if found.flags_uncertain or found.observation is Observation.NO_FINDING:
                    # A present finding outside the 13 says "not No Finding"; an absent one
                    # says nothing.
                    if label is Mention.NEGATIVE:
                        continue
                    label = Mention.UNCERTAIN if found.flags_uncertain else Mention.NEGATIVE
                start, end = sentence.original(clause_span.start + found.span.start,
                                               clause_span.start + found.span.end)
                labelled.append(LabelledMention(
                    found.observation, label, clause,
                    clause[found.span.start:found.span.end], start, end,
                ))
    return labelled


_PRECEDENCE = {Mention.NEGATIVE: 1, Mention.UNCERTAIN: 2, Mention.POSITIVE: 3}


def aggregate(mentions: list[LabelledMention]) -> ReportLabels:
    """Combine mention labels into one label per observation (CheXpert's rules).

    Positive beats uncertain beats negative; No Finding is positive exactly when no
    observation other than Support Devices is positive or uncertain and no No Finding
    mention (a finding outside the 14, labelled negative) is given.
    """
    labels: dict[Observation, Mention] = {}
    for item in mentions:
        current = labels.get(item.observation)
        if current is None or _PRECEDENCE[item.mention] > _PRECEDENCE[current]:
            labels[item.observation] = item.mention
    findings = (o for o in Observation
                if o not in (Observation.NO_FINDING, Observation.SUPPORT_DEVICES))
    other_finding = Observation.NO_FINDING in labels
    if not other_finding and not any(
            labels.get(o) in (Mention.POSITIVE, Mention.UNCERTAIN) for o in findings):
        labels[Observation.NO_FINDING] = Mention.POSITIVE
    else:
        labels.pop(Observation.NO_FINDING, None)
    return ReportLabels(labels)


def label_report(text: str, rules: LabelerRules | None = None) -> ReportLabels:
    """Label a report with the 14 CheXpert observations.

    Parameters
    ----------
    text
        The report text (findings and/or impression, any casing, several sentences).
    rules
        Phrase tables; the shipped ones by default (see :func:`~workers.evaluation.
        labeler_rules.site_rules` for a site's additions).

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
    return aggregate(label_mentions(text, rules))


__all__ = ["CueKind", "LabelledMention", "aggregate", "label_mentions", "label_report",
           "split_clauses", "split_sentences"]
