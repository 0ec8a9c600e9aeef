"""Is a generated report degenerate? Loops, truncation and misplaced section headers.

Language models, small and large, sometimes fall into a loop ("effusion effusion effusion"),
run to the token limit without ending the report, or start a new report inside the
impression. Such text must never be shown as an ordinary draft. :func:`assess_draft` looks
only at the text and at whether generation ended on the end-of-sequence token, so it
applies to any model.

Rules (each gives one :class:`DegenerateReason`):

- ``word_loop``: one word or a run of up to :data:`MAX_LOOP_UNIT` words repeated
  :data:`MIN_LOOP_REPEATS` or more times back to back;
- ``repeated_sentence``: the same sentence :data:`MIN_SENTENCE_REPEATS` or more times;
- ``no_end_token``: generation stopped at its token limit, not on the end token;
- ``misplaced_header``: a section header inside the impression, or a section header
  that appears twice;
- ``empty``: no words at all.

A normal report that states a finding in the findings and again in the impression is not
degenerate: one repetition is ordinary, a third one is not.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

MAX_LOOP_UNIT = 12
"""Longest run of words checked for back-to-back repetition."""
MIN_LOOP_REPEATS = 3
"""Back-to-back occurrences of a word run that make a loop."""
MIN_SENTENCE_REPEATS = 3
"""Occurrences of one sentence that make a loop (findings + impression say it twice)."""

_HEADER = re.compile(
    r"\b(FINDINGS|IMPRESSION|INDICATION|HISTORY|COMPARISON|TECHNIQUE|EXAMINATION|CONCLUSION)"
    r"\s*:", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


class DegenerateReason(StrEnum):
    """Why a draft's text is degenerate."""

    WORD_LOOP = "word_loop"
    REPEATED_SENTENCE = "repeated_sentence"
    NO_END_TOKEN = "no_end_token"
    MISPLACED_HEADER = "misplaced_header"
    EMPTY = "empty"


REASON_TEXT: dict[DegenerateReason, str] = {
    DegenerateReason.WORD_LOOP: "the text repeats itself in a loop",
    DegenerateReason.REPEATED_SENTENCE: "the same sentence is repeated",
    DegenerateReason.NO_END_TOKEN: "the model stopped at its length limit without ending "
                                   "the report",
    DegenerateReason.MISPLACED_HEADER: "a section header appears inside another section",
    DegenerateReason.EMPTY: "the model wrote no words",
}
"""What each reason means, as shown to the radiologist."""


@dataclass(frozen=True)
class DraftQuality:
    """The verdict on a draft's text.

    Attributes
    ----------
    reasons
        Why the text is degenerate, in :class:`DegenerateReason` order; empty when it is not.
    details
        One short explanation per reason (which words loop, which header is misplaced).
    """

    reasons: tuple[DegenerateReason, ...] = ()
    details: tuple[str, ...] = ()

    @property
    def degenerate(self) -> bool:
        """Whether any rule fired."""
        return bool(self.reasons)

    def reason_values(self) -> list[str]:
        """The reasons as their string values (for storage)."""
        return [reason.value for reason in self.reasons]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def find_word_loop(words: list[str]) -> tuple[int, list[str]] | None:
    """The first run of words repeated back to back :data:`MIN_LOOP_REPEATS` times or more.

    Returns
    -------
    tuple or None
        ``(repeats, unit)`` of the longest-repeating run found first, or ``None``.
    """
    count = len(words)
    for unit in range(1, MAX_LOOP_UNIT + 1):
        for start in range(0, count - unit * MIN_LOOP_REPEATS + 1):
            pattern = words[start:start + unit]
            repeats = 1
            at = start + unit
            while words[at:at + unit] == pattern:
                repeats += 1
                at += unit
            if repeats >= MIN_LOOP_REPEATS:
                return repeats, pattern
    return None


def _repeated_sentence(text: str) -> tuple[int, str] | None:
    body = _HEADER.sub(" ", text)
    sentences = [" ".join(_words(s)) for s in _SENTENCE_END.split(body)]
    counts = Counter(s for s in sentences if s)
    if not counts:
        return None
    sentence, times = counts.most_common(1)[0]
    return (times, sentence) if times >= MIN_SENTENCE_REPEATS else None


def _misplaced_header(text: str) -> str | None:
    headers = [(m.group(1).upper(), m.start()) for m in _HEADER.finditer(text)]
    seen: set[str] = set()
    impression_at: int | None = None
    for name, at in headers:
        if name in seen:
            return f"{name}: appears twice"
        if impression_at is not None:
            return f"{name}: inside the impression"
        seen.add(name)
        if name == "IMPRESSION":
            impression_at = at
    return None


def assess_draft(text: str, *, stopped_on_eos: bool | None = None) -> DraftQuality:
    """Judge whether a generated report is degenerate.

    Parameters
    ----------
    text
        The generated text as decoded (both sections, with their headers if the model
        wrote them).
    stopped_on_eos
        Whether generation ended on the end-of-sequence token; ``False`` means it ran to
        its token limit. ``None`` when unknown (the rule is then not applied).

    Returns
    -------
    DraftQuality

    Examples
    --------
    >>> assess_draft("FINDINGS: effusion effusion effusion effusion").reasons
    (<DegenerateReason.WORD_LOOP: 'word_loop'>,)
    >>> assess_draft("FINDINGS: Lungs are clear. IMPRESSION: Normal.",
    ...              stopped_on_eos=True).degenerate
    False
    """
    found: dict[DegenerateReason, str] = {}
    words = _words(_HEADER.sub(" ", text))
    if not words:
        found[DegenerateReason.EMPTY] = "no words"
    loop = find_word_loop(words)
    if loop is not None:
        repeats, unit = loop
        found[DegenerateReason.WORD_LOOP] = f"\u201c{' '.join(unit)}\u201d {repeats} times in a row"
    sentence = _repeated_sentence(text)
    if sentence is not None:
        times, words_of = sentence
        found[DegenerateReason.REPEATED_SENTENCE] = f"\u201c{words_of}\u201d {times} times"
    if stopped_on_eos is False:
        found[DegenerateReason.NO_END_TOKEN] = "no end token before the token limit"
    header = _misplaced_header(text)
    if header is not None:
        found[DegenerateReason.MISPLACED_HEADER] = header
    reasons = tuple(r for r in DegenerateReason if r in found)
    return DraftQuality(reasons=reasons, details=tuple(found[r] for r in reasons))


def describe(reasons: list[str] | tuple[str, ...]) -> list[str]:
    """Human wording of stored reason values (unknown values are shown as they are)."""
    known = {r.value: text for r, text in REASON_TEXT.items()}
    return [known.get(value, value) for value in reasons]


__all__ = [
    "MAX_LOOP_UNIT",
    "MIN_LOOP_REPEATS",
    "MIN_SENTENCE_REPEATS",
    "REASON_TEXT",
    "DegenerateReason",
    "DraftQuality",
    "assess_draft",
    "describe",
    "find_word_loop",
]
