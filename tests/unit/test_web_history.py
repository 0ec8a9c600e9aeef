"""Word diffs of report versions and the order of the history (no database)."""

from __future__ import annotations

import datetime as dt

import pytest

from node.db.models import Report, User
from node.states import ReportState, Role
from node.web.history import Change, report_history, word_diff
from node.web.worklist import WorklistFilters

AT = dt.datetime(2030, 1, 2, 3, 4, tzinfo=dt.UTC)


def _text(runs: tuple, keep: Change) -> str:  # type: ignore[type-arg]
    return "".join(run.text for run in runs if run.change in (Change.SAME, keep))


@pytest.mark.parametrize(("old", "new"), [
    ("Small left pleural effusion.", "Moderate left pleural effusion."),
    ("", "New text entirely."),
    ("Removed entirely.", ""),
    ("Line one.\nLine two.", "Line one.\n\nLine two, longer."),
    ("a a a b", "a b b b"),
    ("Épanchement — 肺野に浸潤影。", "Épanchement modéré — 肺野に浸潤影。"),
])
def test_word_diff_rebuilds_both_texts(old: str, new: str) -> None:
    runs = word_diff(old, new)
    assert _text(runs, Change.INSERTED) == new
    assert _text(runs, Change.DELETED) == old
    assert all(run.text for run in runs)
    assert all(a.change is not b.change for a, b in zip(runs, runs[1:], strict=False))


def test_word_diff_marks_the_changed_word_only() -> None:
    runs = word_diff("Small left pleural effusion.", "Moderate left pleural effusion.")
    assert [(r.change, r.text) for r in runs] == [
        (Change.DELETED, "Small"), (Change.INSERTED, "Moderate"),
        (Change.SAME, " left pleural effusion.")]
    assert [(r.change, r.text) for r in word_diff("Same text.", "Same text.")] == [
        (Change.SAME, "Same text.")]


def _report(id_: int, state: ReportState, findings: str, predecessor: int | None = None,
            reason: str | None = None) -> Report:
    return Report(id=id_, study_id=1, state=state, findings=findings, impression="I.",
                  predecessor_id=predecessor, signed_by_id=None if predecessor is None else 7,
                  signed_at=None if predecessor is None else AT, created_at=AT,
                  model_name="demo", amendment_reason=reason)


def test_history_titles_authors_and_comparisons() -> None:
    versions = [
        _report(12, ReportState.FINAL, "Moderate effusion.", 11, "Re-measured."),
        _report(10, ReportState.DRAFT, "Small effusion."),
        _report(11, ReportState.AMENDED, "Small effusion, left.", 10),
    ]
    users = {7: User(id=7, username="mc", display_name="Curie^Marie", role=Role.RADIOLOGIST)}
    steps = report_history(versions, users)
    assert [s.title for s in steps] == ["AI draft", "Signed report", "Amendment 1"]
    assert [s.compared_with for s in steps] == [None, "AI draft", "Signed report"]
    assert [s.current for s in steps] == [False, False, True]
    assert steps[0].author == "demo" and steps[2].author == "Curie^Marie"
    assert steps[2].reason == "Re-measured." and steps[1].reason is None
    assert not steps[0].changed and steps[1].changed and steps[2].changed
    assert report_history([_report(10, ReportState.DRAFT, "Only a draft.")], users) == []


@pytest.mark.parametrize("query", [
    "", "state=ALL", "flag=urgent&q=doe", "from=2024-01-01&to=2024-02-01&state=SIGNED",
])
def test_worklist_filters_travel_as_a_query_string(query: str) -> None:
    filters = WorklistFilters.from_query_string(query)
    assert WorklistFilters.from_query_string(filters.query_string()) == filters


def test_worklist_filters_from_hostile_query_strings() -> None:
    assert WorklistFilters.from_query_string("state=DROP TABLE&flag=<script>") == \
        WorklistFilters()
    long = WorklistFilters.from_query_string("q=" + "x" * 5000)
    assert len(long.text) == 64
