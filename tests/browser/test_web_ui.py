"""The web app in a real browser: login, worklist, image viewer, sign-off, admin triage."""

from __future__ import annotations

from playwright.sync_api import Page, expect
from sqlalchemy import select

from node.db.models import Export, Report, Study
from node.states import ExportState, ReportState, StudyState
from tests.browser.conftest import LiveNode, log_in, screenshot


def test_anonymous_visitors_are_sent_to_login(page: Page, live_node: LiveNode) -> None:
    """Pages redirect to the login form; the JSON API answers 401."""
    study_id = live_node.studies["doe"].study_id
    page.goto(f"{live_node.url}/studies/{study_id}")
    assert "/login?next=" in page.url
    expect(page.locator("h1")).to_have_text("Sign in")
    assert "DOE" not in page.content()
    assert page.request.get(f"{live_node.url}/api/worklist/counts").status == 401
    screenshot(page, "login.png")


def test_radiologist_reviews_and_signs_with_ctrl_enter(page: Page, live_node: LiveNode) -> None:
    """Worklist (urgent first), the study with its image, window change, edit, Ctrl+Enter."""
    log_in(page, live_node, "hgreg")
    rows = page.locator("#worklist tbody tr")
    expect(rows.first).to_contain_text("GARCIA, MARIA")
    expect(rows.first).to_contain_text("pneumothorax")
    expect(page.locator("[data-count=DRAFTED]")).to_have_text("6")
    screenshot(page, "worklist.png")

    page.click("text=DOE, JANE")
    study = live_node.studies["doe"]
    page.wait_for_url(f"{live_node.url}/studies/{study.study_id}")
    expect(page.locator(".banner.unverified")).to_contain_text("UNVERIFIED AI DRAFT")
    expect(page.locator("#viewport")).to_have_attribute("data-loaded", "1")
    width = page.eval_on_selector("#image", "canvas => canvas.width")
    assert width == 512
    assert page.locator(".thumb").count() == 2
    screenshot(page, "study.png")

    page.fill("#wc", "1400")
    page.fill("#ww", "2000")
    page.locator("#ww").dispatch_event("change")
    expect(page.locator("#viewport")).to_have_attribute("data-window", "1400/2000/0")
    page.locator("#viewport").focus()
    page.keyboard.press("+")
    expect(page.locator("#zoom-level")).not_to_contain_text("fit")
    page.keyboard.press("0")
    expect(page.locator("#zoom-level")).to_contain_text("fit")

    findings = page.locator("#findings")
    findings.fill("Small left pleural effusion. Heart size normal. No pneumothorax.")
    page.locator("#impression").fill("Small left pleural effusion.")
    page.locator("#impression").press("Control+Enter")
    page.wait_for_url(f"{live_node.url}/studies/{study.study_id}?done=signed")
    expect(page.locator(".banner.verified")).to_contain_text("VERIFIED REPORT")
    expect(page.locator(".banner.verified")).to_contain_text("House, Gregory")
    expect(page.locator(".report-text")).to_contain_text("Heart size normal")
    screenshot(page, "study-signed.png")

    with live_node.database.sessions() as session:
        final = session.scalars(select(Report).where(Report.study_id == study.study_id,
                                                     Report.state == ReportState.FINAL)).one()
        assert final.predecessor_id == study.report_id
        assert session.get_one(Study, study.study_id).state == StudyState.SIGNED
    assert live_node.exporter.notified >= 1


def test_radiologist_cannot_open_admin_pages(page: Page, live_node: LiveNode) -> None:
    """Admin pages answer 403 and are not in a radiologist's navigation."""
    log_in(page, live_node, "hgreg")
    expect(page.locator(".mainnav")).not_to_contain_text("Triage")
    for path in ("/admin/triage", "/admin/monitoring", "/admin/config"):
        response = page.goto(f"{live_node.url}{path}")
        assert response is not None and response.status == 403
        expect(page.locator("h1")).to_have_text("Forbidden")


def test_admin_retries_a_failed_export(page: Page, live_node: LiveNode) -> None:
    """Triage lists the failed export; Retry makes it PENDING; monitoring and config render."""
    log_in(page, live_node, "lcuddy")
    page.click(".mainnav >> text=Triage")
    export_id = live_node.failed_export_id
    row = page.locator(f"#export-{export_id}")
    expect(row).to_contain_text("association rejected by PACS")
    page.locator(".failure summary", has_text="Traceback").click()
    expect(page.locator(".failure .trace")).to_be_visible()
    screenshot(page, "triage.png", full_page=True)
    row.get_by_role("button", name="Retry").click()
    expect(page.locator(".alert.success")).to_contain_text("attempted now")
    expect(page.locator(f"#export-{export_id}")).to_have_count(0)
    with live_node.database.sessions() as session:
        assert session.get_one(Export, export_id).state == ExportState.PENDING

    page.click(".mainnav >> text=Monitoring")
    expect(page.locator("svg.chart").first).to_be_visible()
    archive = page.locator('#destinations tr[data-destination="ARCHIVE"]')
    expect(archive).to_contain_text("failing")
    expect(archive.locator("[data-failures]")).to_have_text("3")
    expect(page.locator('#destinations tr[data-destination="PACS"]')).to_contain_text("ok")
    expect(page.locator('[data-alert="export_wait"]')).to_be_visible()
    expect(page.locator("#broker")).to_contain_text("in-process")
    screenshot(page, "monitoring.png", full_page=True)
    page.click(".mainnav >> text=Configuration")
    expect(page.locator("body")).to_contain_text("Intended use")
    screenshot(page, "config.png", full_page=True)
