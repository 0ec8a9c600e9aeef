"""The reading flow in a real browser: a keyboard-first worklist that updates itself, "Sign
and next", the way back, the shortcuts overlay, amendment reasons and the report history.

Each test works on studies of its own, found through the worklist's search filter (which the
study pages carry along), so the order of the tests does not matter.
"""

from __future__ import annotations

import datetime as dt
import re
import time

from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from node.db.models import AuditEvent, Report
from node.db.types import utcnow
from node.states import ReportState
from tests.browser.conftest import (
    LiveNode,
    desktop_context,
    log_in,
    page_recording_errors,
    phantom,
    screenshot,
)
from tests.integration.web_seed import SeededStudy, seed_drafted_study

#: A new study must appear in an open worklist within this many seconds (live stream).
LIVE_BOUND_SECONDS = 3.0




def _seed(node: LiveNode, name: str, minutes_ago: float, seed: int,
          **kwargs: object) -> SeededStudy:
    return seed_drafted_study(
        node.database, node.store, patient_name=name, patient_id=f"PID-{name[:20]}",
        accession=f"A{seed:05d}", seed=seed, image=phantom(300 + seed),
        received_at=utcnow() - dt.timedelta(minutes=minutes_ago), **kwargs)  # type: ignore[arg-type]


def _state(node: LiveNode, study: SeededStudy) -> list[ReportState]:
    with node.database.sessions() as session:
        return list(session.scalars(select(Report.state).where(
            Report.study_id == study.study_id).order_by(Report.id)))


def _row(page: Page, study: SeededStudy):  # type: ignore[no-untyped-def]
    return page.locator(f"tr[data-study-id='{study.study_id}']")


def _on_study(page: Page, node: LiveNode, study: SeededStudy) -> None:
    """The study page of ``study`` is open with its image and its draft text on screen."""
    page.wait_for_url(re.compile(rf"{re.escape(node.url)}/studies/{study.study_id}(\?.*)?$"))
    expect(page.locator("#findings")).to_be_visible()
    page.wait_for_function("() => { const v = document.getElementById('viewport');"
                           " return v && Number(v.dataset.drawn) > 0; }")


def _contrast(first: str, second: str) -> float:
    """WCAG contrast ratio of two ``rgb(...)`` colours."""
    def luminance(colour: str) -> float:
        channels = [int(v) / 255 for v in re.findall(r"\d+", colour)[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    high, low = sorted((luminance(first), luminance(second)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_worklist_selection_is_visible_and_keyboard_driven(browser: Browser,
                                                           live_node: LiveNode) -> None:
    """Arrow keys and j/k move one aria-selected, focused row whose look differs from
    hover (accent ring of at least 3:1 against the page); Enter opens it; Esc on the study
    page comes back with the same row selected."""
    studies = [_seed(live_node, f"KEYS^{n}", 50 - n, 20 + n) for n in range(3)]
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    log_in(page, live_node, "hgreg")
    page.goto(f"{live_node.url}/?q=keys")
    expect(page.locator("tr[data-study-id]")).to_have_count(3)
    expect(page.locator("tr[aria-selected='true']")).to_have_count(0)

    page.keyboard.press("ArrowDown")
    expect(_row(page, studies[0])).to_have_attribute("aria-selected", "true")
    page.keyboard.press("j")
    page.keyboard.press("j")
    expect(_row(page, studies[2])).to_have_attribute("aria-selected", "true")
    page.keyboard.press("k")
    selected = _row(page, studies[1])
    expect(selected).to_have_attribute("aria-selected", "true")
    expect(selected).to_be_focused()
    expect(page.locator("tr[aria-selected='true']")).to_have_count(1)

    _row(page, studies[0]).hover()
    look = """(row) => { const s = getComputedStyle(row);
        return [s.backgroundColor, s.outlineStyle, s.outlineColor, s.outlineWidth]; }"""
    hovered = _row(page, studies[0]).evaluate(look)
    chosen = selected.evaluate(look)
    assert chosen[0] != hovered[0], (chosen, hovered)   # not the hover tint
    assert chosen[1] == "solid" and hovered[1] in ("none", "")
    assert float(chosen[3].removesuffix("px")) >= 2
    assert _contrast(chosen[2], "rgb(255, 255, 255)") >= 3.0
    assert _contrast(chosen[2], chosen[0]) >= 3.0
    screenshot(page, "worklist-selection.png")

    page.keyboard.press("Enter")
    _on_study(page, live_node, studies[1])
    assert "wl=q%3Dkeys" in page.url  # the filters travel with the study
    page.keyboard.press("Escape")
    page.wait_for_url(f"{live_node.url}/?q=keys")
    expect(_row(page, studies[1])).to_have_attribute("aria-selected", "true")
    expect(_row(page, studies[1])).to_be_focused()
    context.close()
    assert not errors, errors


def test_sign_and_next_back_and_previous_next(browser: Browser, live_node: LiveNode) -> None:
    """Ctrl+Shift+Enter and the button sign and open the next study of the filtered
    worklist; Alt+→/Alt+← move without signing; Esc leaves a text field first, then goes
    back; after the last study the worklist says so."""
    first, second, third = (_seed(live_node, f"FLOW^{n}", 40 - n, 30 + n) for n in range(3))
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    log_in(page, live_node, "hgreg")
    page.goto(f"{live_node.url}/?q=flow")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    _on_study(page, live_node, first)

    page.locator("#impression").fill("Signed with the keyboard.")
    page.keyboard.press("Control+Shift+Enter")
    _on_study(page, live_node, second)
    expect(page.locator(".alert.success")).to_contain_text("Previous report signed")
    expect(page.locator("#findings")).not_to_have_value("")
    assert _state(live_node, first) == [ReportState.DRAFT, ReportState.FINAL]

    page.keyboard.press("Alt+ArrowRight")
    _on_study(page, live_node, third)
    assert _state(live_node, second) == [ReportState.DRAFT]  # not signed by moving on
    page.keyboard.press("Alt+ArrowLeft")
    _on_study(page, live_node, second)

    page.locator("#findings").focus()
    page.keyboard.press("Escape")
    expect(page.locator("#findings")).not_to_be_focused()
    assert f"/studies/{second.study_id}" in page.url
    page.keyboard.press("Escape")
    page.wait_for_url(f"{live_node.url}/?q=flow")
    expect(_row(page, second)).to_have_attribute("aria-selected", "true")
    expect(_row(page, first)).to_have_count(0)  # signed: off the list
    page.keyboard.press("Enter")
    _on_study(page, live_node, second)

    page.get_by_role("button", name=re.compile("Sign and next")).click()
    _on_study(page, live_node, third)
    page.keyboard.press("Control+Shift+Enter")
    page.wait_for_url(f"{live_node.url}/?q=flow&done=signed")
    expect(page.locator("#worklist-done")).to_contain_text("last study")
    for study in (second, third):
        assert _state(live_node, study) == [ReportState.DRAFT, ReportState.FINAL]
    context.close()
    assert not errors, errors


def test_sign_and_next_of_an_unedited_urgent_draft_still_asks(browser: Browser,
                                                              live_node: LiveNode) -> None:
    """The urgent confirmation stands in front of "Sign and next": Esc goes back to the
    report, signing nothing; confirming signs and opens the next study."""
    urgent = _seed(live_node, "ASKS^URGENT", 30, 40, urgent=True,
                   urgent_findings=["pneumothorax"])
    routine = _seed(live_node, "ASKS^ROUTINE", 20, 41)
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    log_in(page, live_node, "hgreg")
    page.goto(f"{live_node.url}/studies/{urgent.study_id}?wl=q%3Dasks")
    _on_study(page, live_node, urgent)
    page.keyboard.press("Control+Shift+Enter")
    dialog = page.locator("#urgent-confirm")
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert f"/studies/{urgent.study_id}" in page.url  # Esc closed the dialog, nothing else
    assert _state(live_node, urgent) == [ReportState.DRAFT]

    page.keyboard.press("Control+Shift+Enter")
    expect(dialog).to_be_visible()
    page.click("#urgent-confirm-sign")
    _on_study(page, live_node, routine)
    assert _state(live_node, urgent) == [ReportState.DRAFT, ReportState.FINAL]
    with live_node.database.sessions() as session:
        assert session.scalars(select(AuditEvent.actor).where(
            AuditEvent.action == "unedited_urgent_confirmed",
            AuditEvent.study_id == urgent.study_id)).all() == ["hgreg"]
    context.close()
    assert not errors, errors


def test_shortcuts_overlay_lists_the_keys(browser: Browser, live_node: LiveNode) -> None:
    """"?" opens the page's shortcuts (not while typing); Esc closes them."""
    study = _seed(live_node, "HELP^ME", 15, 50)
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    log_in(page, live_node, "hgreg")
    page.goto(f"{live_node.url}/?q=help")
    overlay = page.locator("#shortcuts")
    expect(overlay).to_be_hidden()
    page.keyboard.press("?")
    expect(overlay).to_be_visible()
    expect(overlay).to_contain_text("Open the selected study")
    page.keyboard.press("Escape")
    expect(overlay).to_be_hidden()

    page.goto(f"{live_node.url}/studies/{study.study_id}")
    page.locator("#findings").focus()
    page.keyboard.press("?")
    expect(overlay).to_be_hidden()  # typed into the report instead
    page.locator("#findings").blur()
    page.keyboard.press("?")
    expect(overlay).to_be_visible()
    for text in ("Sign and open the next study", "Back to the worklist", "Previous study"):
        expect(overlay).to_contain_text(text)
    screenshot(page, "study-shortcuts.png")
    page.keyboard.press("Escape")
    expect(overlay).to_be_hidden()
    assert f"/studies/{study.study_id}" in page.url  # Esc closed the overlay only
    context.close()
    assert not errors, errors


def test_live_worklist_shows_new_studies_and_keeps_the_selection(
        browser: Browser, live_node: LiveNode) -> None:
    """A study drafted while the worklist is open appears within the bound, above the
    selected row, which stays selected and focused; the counts follow."""
    kept = _seed(live_node, "LIVE^KEPT", 20, 60)
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    log_in(page, live_node, "hgreg")
    page.goto(f"{live_node.url}/?q=live")
    expect(page.locator("#worklist-card")).to_have_attribute("data-live", "stream")
    page.keyboard.press("ArrowDown")
    expect(_row(page, kept)).to_have_attribute("aria-selected", "true")
    drafted = int(page.locator("[data-count='DRAFTED']").inner_text())

    started = time.monotonic()
    older = _seed(live_node, "LIVE^OLDER", 90, 61)  # sorts above the selected row
    expect(_row(page, older)).to_be_visible(timeout=LIVE_BOUND_SECONDS * 1000)
    elapsed = time.monotonic() - started
    assert elapsed <= LIVE_BOUND_SECONDS, elapsed
    rows = page.locator("tr[data-study-id]")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.studyId)") == [
        str(older.study_id), str(kept.study_id)]
    expect(_row(page, kept)).to_have_attribute("aria-selected", "true")
    expect(_row(page, kept)).to_be_focused()
    expect(page.locator("[data-count='DRAFTED']")).to_have_text(str(drafted + 1))

    urgent = _seed(live_node, "LIVE^URGENT", 1, 62, urgent=True,
                   urgent_findings=["pneumothorax"])
    expect(rows.first).to_have_attribute("data-study-id", str(urgent.study_id),
                                         timeout=LIVE_BOUND_SECONDS * 1000)
    expect(_row(page, kept)).to_have_attribute("aria-selected", "true")
    page.keyboard.press("Enter")
    _on_study(page, live_node, kept)
    context.close()
    assert not errors, errors


def test_live_worklist_polls_when_the_stream_is_refused(browser: Browser,
                                                        live_node: LiveNode) -> None:
    """A refused stream (429) falls back to polling: new studies still appear, later."""
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    log_in(page, live_node, "hgreg")
    page.route("**/api/worklist/events**", lambda route: route.fulfill(
        status=429, content_type="application/json", body='{"detail": "too many"}'))
    page.goto(f"{live_node.url}/?q=polled")
    expect(page.locator("#worklist-card")).to_have_attribute("data-live", "poll")
    expect(page.locator("#live-status")).to_contain_text("every few seconds")
    study = _seed(live_node, "POLLED^STUDY", 5, 70)
    expect(_row(page, study)).to_be_visible(timeout=10_000)  # 5 s polling
    context.close()
    assert not errors, errors


def test_live_worklist_polls_when_the_stream_keeps_breaking(browser: Browser,
                                                           live_node: LiveNode) -> None:
    """A stream cut before its first event, again and again (a proxy in the way), is given
    up for polling after three tries."""
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    log_in(page, live_node, "hgreg")
    cut: list[str] = []

    def cut_stream(route):  # type: ignore[no-untyped-def]
        cut.append(route.request.url)
        route.fulfill(status=200, content_type="text/event-stream", body="retry: 50\n\n")

    page.route("**/api/worklist/events**", cut_stream)
    page.goto(f"{live_node.url}/?q=broken")
    expect(page.locator("#worklist-card")).to_have_attribute("data-live", "poll",
                                                               timeout=5_000)
    page.wait_for_timeout(500)
    assert len(cut) == 3, cut  # no more attempts once polling
    context.close()
    assert not errors, errors


def test_live_stream_needs_a_login(browser: Browser, live_node: LiveNode) -> None:
    """Without a login the stream, the digest and the rows answer 401 and show nothing."""
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    _seed(live_node, "HIDDEN^PATIENT", 5, 80)
    for path in ("/api/worklist/events", "/api/worklist/state", "/worklist/rows?q=hidden"):
        response = page.request.get(f"{live_node.url}{path}")
        assert response.status == 401, path
        assert "HIDDEN" not in response.text()
    context.close()
    assert not errors, errors


def test_amendment_needs_a_reason_and_history_shows_the_changes(browser: Browser,
                                                                live_node: LiveNode) -> None:
    """Amending asks for a reason (the form will not go without one); the history then
    shows draft → signed → amendment with words added and removed, who, when and why."""
    study = _seed(live_node, "HISTORY^ONE", 25, 90,
                  findings="Heart size is normal. Small left pleural effusion.",
                  impression="Small left pleural effusion.")
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    log_in(page, live_node, "hgreg")
    page.goto(f"{live_node.url}/studies/{study.study_id}")
    page.locator("#impression").fill("Small left pleural effusion. No pneumothorax.")
    page.locator("#impression").press("Control+Enter")
    page.wait_for_url(re.compile(r"done=signed"))

    page.get_by_text("Amend report…").click()
    page.locator("#amend-findings").fill("Heart size is normal. Moderate left pleural effusion.")
    page.locator("#amend-impression").press("Control+Enter")
    expect(page.locator("#amend-reason")).to_be_focused()  # the browser asks for it
    assert page.locator("#amend-reason").evaluate("(e) => !e.validity.valid")
    assert _state(live_node, study) == [ReportState.DRAFT, ReportState.FINAL]

    page.locator("#amend-reason").fill("Effusion re-measured on the lateral view.")
    page.locator("#amend-reason").press("Control+Enter")
    page.wait_for_url(re.compile(r"done=amended"))
    assert _state(live_node, study) == [ReportState.DRAFT, ReportState.AMENDED,
                                        ReportState.FINAL]

    history = page.locator("#history")
    expect(history.locator(".history-title")).to_have_text(
        ["AI draft", "Signed report", "Amendment 1"])
    signed, amendment = history.locator(".history-step").nth(1), history.locator(
        ".history-step").nth(2)
    expect(signed.locator(".history-impression ins")).to_have_text(" No pneumothorax.")
    expect(amendment.locator(".history-findings del")).to_have_text("Small")
    expect(amendment.locator(".history-findings ins")).to_have_text("Moderate")
    expect(amendment.locator(".reason-text")).to_have_text(
        "Effusion re-measured on the lateral view.")
    expect(amendment).to_contain_text("signed by House, Gregory")
    history.scroll_into_view_if_needed()
    screenshot(page, "study-history.png")
    context.close()
    assert not errors, errors
