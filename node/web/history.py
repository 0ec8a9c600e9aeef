"""The history of a study's report: draft → signed report → each amendment, as word diffs.

:func:`report_history` turns the report versions of a study into steps the study page
shows one under the other: the AI draft, then every signed version compared word by word
with the version it superseded (words taken out struck through, words put in marked), with
who signed it, when, and, for an amendment, the reason given. The comparison is made on the
server with :mod:`difflib`; the page needs no script for it.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from node.db.models import Report, User
from node.states import ReportState

#: Words and the blanks between them; both are compared, so line breaks show too.
_TOKENS = re.compile(r"\S+|\s+")


class Change(Enum):
    """What a run of words did between two versions."""

    SAME = "same"
    INSERTED = "inserted"
    DELETED = "deleted"


@dataclass(frozen=True)
class DiffRun:
    """Consecutive words with the same fate."""

    change: Change
    text: str


@dataclass(frozen=True)
class HistoryStep:
    """One version of the report, compared with the one it superseded."""

    report: Report
    title: str
    """``AI draft``, ``Signed report``, ``Amendment 1``, …"""
    author: str
    """The model (draft) or the radiologist's display name (``Family^Given``)."""
    at: dt.datetime | None
    reason: str | None
    """Why an amendment was made; ``None`` otherwise."""
    findings: tuple[DiffRun, ...]
    impression: tuple[DiffRun, ...]
    compared_with: str | None
    """Title of the version this one is compared with (``None`` for the draft)."""
    current: bool

    @property
    def changed(self) -> bool:
        """Whether the text differs from the version it superseded."""
        return any(run.change is not Change.SAME for run in (*self.findings, *self.impression))


def word_diff(old: str, new: str) -> tuple[DiffRun, ...]:
    """Compare two texts word by word.

    Returns
    -------
    tuple of DiffRun
        Runs in reading order; a replaced passage is its deleted words, then its inserted
        words. Joining the texts of the SAME and INSERTED runs gives ``new``; of the SAME and
        DELETED runs, ``old``.
    """
    before, after = _TOKENS.findall(old), _TOKENS.findall(new)
    runs: list[DiffRun] = []

    def add(change: Change, tokens: Sequence[str]) -> None:
        text = "".join(tokens)
        if not text:
            return
        if runs and runs[-1].change is change:
            runs[-1] = DiffRun(change, runs[-1].text + text)
        else:
            runs.append(DiffRun(change, text))

    matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
    for tag, a_start, a_end, b_start, b_end in matcher.get_opcodes():
        if tag == "equal":
            add(Change.SAME, before[a_start:a_end])
        else:
            add(Change.DELETED, before[a_start:a_end])
            add(Change.INSERTED, after[b_start:b_end])
    return tuple(runs)


def report_history(versions: Sequence[Report], users: Mapping[int, User]) -> list[HistoryStep]:
    """The steps of a study's report history, oldest first.

    Parameters
    ----------
    versions
        The study's report rows (any order).
    users
        The users who signed them, by id.

    Returns
    -------
    list of HistoryStep
        The drafts (their text as written), then each signed version compared with its
        predecessor. Empty when nothing was signed (the draft alone needs no comparison).
    """
    ordered = sorted(versions, key=lambda v: v.id)
    if not any(v.state is not ReportState.DRAFT for v in ordered):
        return []
    by_id = {v.id: v for v in ordered}
    titles: dict[int, str] = {}
    steps: list[HistoryStep] = []
    amendments = 0
    newest = ordered[-1].id
    for version in ordered:
        previous = by_id.get(version.predecessor_id) if version.predecessor_id else None
        if version.state is ReportState.DRAFT:
            title = "AI draft"
            author = version.model_name or "model"
            at: dt.datetime | None = version.created_at
        else:
            if previous is not None and previous.state is not ReportState.DRAFT:
                amendments += 1
                title = f"Amendment {amendments}"
            else:
                title = "Signed report"
            signer = users.get(version.signed_by_id or 0)
            author = signer.display_name if signer is not None else "unknown user"
            at = version.signed_at
        titles[version.id] = title
        base_findings = previous.findings if previous is not None else version.findings
        base_impression = previous.impression if previous is not None else version.impression
        steps.append(HistoryStep(
            report=version, title=title, author=author, at=at,
            reason=version.amendment_reason,
            findings=word_diff(base_findings, version.findings),
            impression=word_diff(base_impression, version.impression),
            compared_with=titles.get(previous.id) if previous is not None else None,
            current=version.id == newest,
        ))
    return steps


__all__ = ["Change", "DiffRun", "HistoryStep", "report_history", "word_diff"]
