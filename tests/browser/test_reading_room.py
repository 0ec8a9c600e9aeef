"""The reading room in a real browser: nothing a radiologist types is lost.

Autosave and restore, login expiry, sign conflicts, presence, a full storage volume and the
confirmation before signing an unedited urgent draft.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from node.db.models import AuditEvent, Report, WebSession, WorkingCopy
from node.db.types import utcnow
from node.reports.signoff import final_series_uid
from node.states import ReportState
from tests.browser.conftest import (
    LiveNode,
    desktop_context,
    log_in,
    page_recording_errors,
    phantom,
    screenshot,
)
from tests.integration.web_seed import PASSWORD, SeededStudy, seed_drafted_study

SAVED = re.compile(r"saved \d\d:\d\d:\d\d")




def _open(page: Page, node: LiveNode, study: SeededStudy) -> None:
    page.goto(f"{node.url}/studies/{study.study_id}")
    expect(page.locator("#findings")).to_be_visible()


def _seed(node: LiveNode, name: str, accession: str, seed: int, **kwargs: object) -> SeededStudy:
    return seed_drafted_study(node.database, node.store, patient_name=name,
                              patient_id=f"PID-{accession}", accession=accession, seed=seed,
                              image=phantom(200 + seed), **kwargs)  # type: ignore[arg-type]


def _final(node: LiveNode, study: SeededStudy) -> Report | None:
    with node.database.sessions() as session:
        return session.scalars(select(Report).where(Report.study_id == study.study_id,
                                                    Report.state == ReportState.FINAL)).first()


def _audits(node: LiveNode, action: str, study: SeededStudy) -> list[AuditEvent]:
    with node.database.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(
            AuditEvent.action == action, AuditEvent.study_id == study.study_id)))


def test_text_is_saved_continuously_and_restored(browser: Browser, live_node: LiveNode) -> None:
    """Typing saves to the node (status line), reopening restores; the browser keeps a copy
    when the node cannot be reached."""
    study = live_node.studies["smith"]
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    log_in(page, live_node, "hgreg")
    _open(page, live_node, study)
    page.locator("#findings").fill("Autosaved findings: small right apical pneumothorax.")
    page.locator("#impression").fill("Small right pneumothorax.")
    expect(page.locator("#save-status")).to_have_text(SAVED)
    with live_node.database.sessions() as session:
        copy = session.scalars(select(WorkingCopy).where(
            WorkingCopy.report_id == study.report_id)).one()
        assert copy.impression == "Small right pneumothorax."
    page.locator("#impression").fill("Small right pneumothorax, new since yesterday.")
    expect(page.locator("#save-status")).to_have_text(SAVED)
    assert len(_audits(live_node, "working_copy_started", study)) == 1  # audited once

    page.goto(f"{live_node.url}/")
    _open(page, live_node, study)
    expect(page.locator("#findings")).to_have_value(
        "Autosaved findings: small right apical pneumothorax.")
    expect(page.locator("#impression")).to_have_value(
        "Small right pneumothorax, new since yesterday.")

    # The node is unreachable for saves: the text is kept in this browser and restored.
    page.route("**/working-copy", lambda route: route.abort())
    page.locator("#impression").fill("Typed while the node could not be reached.")
    expect(page.locator("#save-status")).to_contain_text("kept in this browser")
    page.reload()
    expect(page.locator("#impression")).to_have_value("Typed while the node could not be reached.")
    expect(page.locator("#save-status")).to_contain_text("restored from this browser")
    page.unroute("**/working-copy")
    page.locator("#impression").press("End")
    page.keyboard.type(" Back online.")
    expect(page.locator("#save-status")).to_have_text(SAVED)
    with live_node.database.sessions() as session:
        assert session.scalars(select(WorkingCopy.impression).where(
            WorkingCopy.report_id == study.report_id)).one() == (
            "Typed while the node could not be reached. Back online.")
    context.close()
    assert not errors, errors


def _expire_logins(node: LiveNode, username: str) -> None:
    """End the user's logins on the server, as the idle timeout does."""
    from node.db.models import User

    with node.database.sessions.begin() as session:
        user_id = session.scalars(select(User.id).where(User.username == username)).one()
        for web_session in session.scalars(select(WebSession).where(
                WebSession.user_id == user_id, WebSession.ended_at.is_(None))):
            web_session.expires_at = utcnow() - dt.timedelta(seconds=1)


def test_sign_after_login_expiry_keeps_the_text(browser: Browser, live_node: LiveNode) -> None:
    """Sign with an expired login shows a message and keeps the text; logging in again
    returns to the study with the text, which can then be signed."""
    study = live_node.studies["nguyen"]
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    log_in(page, live_node, "hgreg")
    _open(page, live_node, study)
    page.locator("#findings").fill("Bibasal atelectasis. No effusion.")
    expect(page.locator("#save-status")).to_have_text(SAVED)
    _expire_logins(live_node, "hgreg")
    page.locator("#impression").fill("Bibasal atelectasis.")
    page.locator("#impression").press("Control+Enter")
    message = page.locator("#sign-message")
    expect(message).to_contain_text("Your login expired")
    expect(message).to_contain_text("your text is kept")
    expect(page.locator("#impression")).to_have_value("Bibasal atelectasis.")
    assert _final(live_node, study) is None
    screenshot(page, "study-login-expired.png")

    page.click("#login-again")
    page.wait_for_url(re.compile(r"/login\?next="))
    page.fill("input[name=username]", "hgreg")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_node.url}/studies/{study.study_id}")
    expect(page.locator("#findings")).to_have_value("Bibasal atelectasis. No effusion.")
    expect(page.locator("#impression")).to_have_value("Bibasal atelectasis.")
    page.locator("#impression").press("Control+Enter")
    page.wait_for_url(f"{live_node.url}/studies/{study.study_id}?done=signed")
    final = _final(live_node, study)
    assert final is not None and final.impression == "Bibasal atelectasis."
    context.close()
    assert not errors, errors


def test_login_next_never_leaves_the_site(browser: Browser, live_node: LiveNode) -> None:
    """``next`` pointing at another origin lands on the worklist of this node."""
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        context.clear_cookies()
        page.goto(f"{live_node.url}/login?next={target}")
        page.fill("input[name=username]", "hgreg")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        assert page.url.startswith(live_node.url + "/"), (target, page.url)
        assert "evil.example" not in page.url
    context.close()
    assert not errors, errors


def test_sign_conflict_shows_both_texts_and_amends(browser: Browser,
                                                   live_node: LiveNode) -> None:
    """A colleague signs first: both texts side by side, amend with mine or discard mine."""
    study = live_node.studies["doe"]
    first, second = desktop_context(browser), desktop_context(browser)
    house, house_errors = page_recording_errors(first)
    wilson, wilson_errors = page_recording_errors(second)
    log_in(house, live_node, "hgreg")
    log_in(wilson, live_node, "jwilson")
    _open(house, live_node, study)
    _open(wilson, live_node, study)
    wilson.locator("#findings").fill("Wilson: left lower lobe consolidation.")
    wilson.locator("#impression").fill("Left lower lobe pneumonia.")
    house.locator("#findings").fill("House: no acute abnormality.")
    house.locator("#impression").press("Control+Enter")
    house.wait_for_url(re.compile(r"done=signed"))

    wilson.locator("#impression").press("Control+Enter")
    conflict = wilson.locator("#conflict")
    expect(conflict).to_contain_text("Signed by House, Gregory")
    expect(wilson.locator("#conflict-signed-findings")).to_have_text(
        "House: no acute abnormality.")
    expect(wilson.locator("#conflict-findings")).to_have_value(
        "Wilson: left lower lobe consolidation.")
    expect(wilson.locator("#conflict-impression")).to_have_value("Left lower lobe pneumonia.")
    screenshot(wilson, "study-conflict.png")

    wilson.locator("#conflict-reason").fill("My reading differs: consolidation.")
    wilson.get_by_role("button", name=re.compile("Amend the signed report")).click()
    wilson.wait_for_url(re.compile(r"done=amended"))
    final = _final(live_node, study)
    assert final is not None and final.findings == "Wilson: left lower lobe consolidation."
    with live_node.database.sessions() as session:
        assert session.scalars(select(WorkingCopy).where(
            WorkingCopy.report_id == study.report_id)).all() == []
    expect(wilson.locator("#conflict")).to_have_count(0)

    # Another study: this time the colleague's text is discarded, explicitly.
    other = _seed(live_node, "KIM^SORA", "ACC4001", 11)
    _open(house, live_node, other)
    _open(wilson, live_node, other)
    wilson.locator("#findings").fill("Text Wilson will throw away.")
    expect(wilson.locator("#save-status")).to_have_text(SAVED)
    house.locator("#findings").fill("Signed by House first.")
    house.locator("#impression").press("Control+Enter")
    house.wait_for_url(re.compile(r"done=signed"))
    wilson.reload()  # reopening shows the conflict too: the text was saved on the node
    expect(wilson.locator("#conflict-findings")).to_have_value("Text Wilson will throw away.")
    wilson.click("#discard-mine")
    wilson.wait_for_url(re.compile(r"done=discarded"))
    expect(wilson.locator("#conflict")).to_have_count(0)
    assert len(_audits(live_node, "working_copy_discarded", other)) == 1
    first.close()
    second.close()
    assert not house_errors and not wilson_errors, house_errors + wilson_errors


def test_presence_shows_colleagues_not_yourself(browser: Browser, live_node: LiveNode) -> None:
    """"Open by Dr X" on the worklist and the study page while X reads; gone after X left."""
    study = live_node.studies["smith"]
    first, second = desktop_context(browser), desktop_context(browser)
    house, house_errors = page_recording_errors(first)
    wilson, wilson_errors = page_recording_errors(second)
    log_in(house, live_node, "hgreg")
    log_in(wilson, live_node, "jwilson")
    _open(house, live_node, study)
    house.wait_for_timeout(700)  # at least one heartbeat
    expect(house.locator("#presence")).to_be_hidden()  # not shown to yourself

    wilson.goto(f"{live_node.url}/")
    row = wilson.locator(f"tr[data-href='/studies/{study.study_id}']")
    expect(row).to_contain_text("Open by Dr House")
    _open(wilson, live_node, study)
    expect(wilson.locator("#presence")).to_have_text("Open by Dr House")
    expect(house.locator("#presence")).to_have_text("Open by Dr Wilson")
    screenshot(wilson, "study-presence.png")

    house.close()
    # Heartbeats stop; the presence expires (3 s in these tests) and the badge goes.
    expect(wilson.locator("#presence")).to_be_hidden(timeout=10_000)
    first.close()
    second.close()
    assert not house_errors and not wilson_errors, house_errors + wilson_errors


@contextmanager
def _unwritable(folder: Path) -> Iterator[str]:
    """Make writes into ``folder`` fail for real: a full 64 KiB tmpfs mounted there, or,
    where mounting is not allowed, a plain file in its place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                             capture_output=True, check=False).returncode == 0
    try:
        if mounted:
            try:
                with (folder / "filler").open("wb") as handle:
                    while True:
                        handle.write(b"\0" * 4096)
                        handle.flush()
            except OSError:
                pass  # full
            yield "full"
        else:
            folder.rmdir()
            folder.write_bytes(b"not a folder")
            yield "broken"
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        elif folder.is_file():
            folder.unlink()


def test_storage_failure_on_sign_keeps_the_text(browser: Browser, live_node: LiveNode) -> None:
    """The signed SR cannot be written: a clear error, the text stays, signing later works."""
    study = _seed(live_node, "OKAFOR^CHIDI", "ACC4002", 12)
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    log_in(page, live_node, "hgreg")
    _open(page, live_node, study)
    page.locator("#findings").fill("Text typed before the disk filled up.")
    folder = live_node.store.absolute(live_node.store.relative_folder(
        study.study_uid, final_series_uid(study.study_uid)))
    with _unwritable(folder) as how:
        with page.expect_response(lambda r: r.url.endswith("/sign")) as answer:
            page.locator("#findings").press("Control+Enter")
        assert answer.value.status == 503
        expect(page.locator("#sign-message")).to_contain_text(
            "storage is full" if how == "full" else "could not be written to storage")
        expect(page.locator("#sign-message")).to_contain_text("Your text is kept")
        expect(page.locator("#findings")).to_have_value("Text typed before the disk filled up.")
        assert _final(live_node, study) is None
        screenshot(page, "study-storage-full.png")
    with live_node.database.sessions() as session:
        copy = session.scalars(select(WorkingCopy).where(
            WorkingCopy.report_id == study.report_id)).one()
        assert copy.findings == "Text typed before the disk filled up."
    page.get_by_role("button", name=re.compile("Sign report")).click()
    page.wait_for_url(re.compile(r"done=signed"))
    final = _final(live_node, study)
    assert final is not None and final.findings == "Text typed before the disk filled up."
    context.close()
    assert not errors, errors


def test_unedited_urgent_draft_needs_confirmation(browser: Browser,
                                                  live_node: LiveNode) -> None:
    """Ctrl+Enter on an unedited urgent draft opens a confirmation; Escape goes back, the
    confirmation signs and is audited."""
    study = live_node.studies["garcia"]
    context = desktop_context(browser)
    page, errors = page_recording_errors(context)
    log_in(page, live_node, "hgreg")
    _open(page, live_node, study)
    page.locator("#impression").focus()
    page.keyboard.press("Control+Enter")
    dialog = page.locator("#urgent-confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("pneumothorax")
    screenshot(page, "study-urgent-confirm.png")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert _final(live_node, study) is None

    page.locator("#impression").press("Control+Enter")
    expect(dialog).to_be_visible()
    page.click("#urgent-confirm-sign")
    page.wait_for_url(re.compile(r"done=signed"))
    assert _final(live_node, study) is not None
    confirmed = _audits(live_node, "unedited_urgent_confirmed", study)
    assert len(confirmed) == 1 and confirmed[0].actor == "hgreg"
    context.close()
    assert not errors, errors
