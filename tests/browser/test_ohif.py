"""The OHIF Viewer served by the node, in a real browser, with the real ``@ohif/app`` dist.

The same login opens it; its study list comes from the node's QIDO-RS; a study renders real
pixels from WADO-RS; the draft SR opens in OHIF's SR view with the draft's text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, Response, expect
from pydicom.uid import JPEG2000Lossless

from tests.browser.conftest import OHIF_DIST, LiveNode, log_in, phantom, screenshot
from tests.integration.web_seed import PASSWORD, seed_drafted_study

#: OHIF's viewport canvas (cornerstone3D draws each viewport's image into it).
CANVAS = "canvas.cornerstone-canvas"
OHIF_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module", autouse=True)
def ohif_installed() -> None:
    """The viewer must be installed: ``make test`` installs it; no skip stands in for it."""
    assert (OHIF_DIST / "index.html").is_file(), (
        f"the OHIF Viewer is not installed in {OHIF_DIST}: run `make ohif`")


@pytest.fixture
def ohif_context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(OHIF_TIMEOUT_MS)
    yield context
    context.close()


@pytest.fixture
def ohif_page(ohif_context: BrowserContext) -> Iterator[tuple[Page, list[str]]]:
    """A page that records script errors and Content Security Policy violations."""
    page = ohif_context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(f"console: {message.text}")
            if message.type == "error" else None)
    yield page, problems


def _csp_violations(problems: list[str]) -> list[str]:
    return [p for p in problems if "Content Security Policy" in p]


def test_viewer_asks_for_the_login_and_comes_back(
    ohif_page: tuple[Page, list[str]], live_node: LiveNode,
) -> None:
    """An unauthenticated /viewer/ link goes through the node's login and back to it."""
    page, problems = ohif_page
    study = live_node.studies["doe"]
    target = f"/viewer/viewer?StudyInstanceUIDs={study.study_uid}"
    page.goto(live_node.url + target)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("input[name=username]", "hgreg")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(live_node.url + target)
    page.wait_for_selector(CANVAS)
    assert not _csp_violations(problems), problems


def test_study_page_opens_the_study_in_the_viewer(
    ohif_page: tuple[Page, list[str]], ohif_context: BrowserContext, live_node: LiveNode,
) -> None:
    """The study page's "Open in OHIF" opens that study in the viewer, in a new tab, with
    the login already made."""
    page, problems = ohif_page
    study = live_node.studies["smith"]
    log_in(page, live_node, "hgreg")
    page.goto(f"{live_node.url}/studies/{study.study_id}")
    with ohif_context.expect_page() as opened:
        page.get_by_role("link", name="Open in OHIF").click()
    viewer = opened.value
    viewer.wait_for_url(f"{live_node.url}/viewer/viewer?StudyInstanceUIDs={study.study_uid}")
    stats = _wait_for_image(viewer)
    assert stats["std"] > 20 and stats["levels"] > 64, stats
    assert not _csp_violations(problems), problems


def test_study_list_shows_the_node_studies(
    ohif_page: tuple[Page, list[str]], live_node: LiveNode,
) -> None:
    """OHIF's study list is the node's QIDO-RS answer, fetched with the login cookie."""
    page, problems = ohif_page
    qido: list[Request] = []
    page.on("request", lambda r: qido.append(r) if "/dicomweb/studies" in r.url else None)
    log_in(page, live_node, "hgreg")
    page.goto(f"{live_node.url}/viewer/")
    for patient_id in ("PID-1001", "PID-1002", "PID-1003", "PID-1004"):
        expect(page.get_by_text(patient_id, exact=True).first).to_be_visible()
    screenshot(page, "ohif-study-list.png")
    assert qido, "the study list made no QIDO-RS request"
    assert all("radnode_session=" in (r.header_value("cookie") or "") for r in qido)
    assert not _csp_violations(problems), problems


def _canvas_statistics(page: Page) -> dict[str, float]:
    """Mean, standard deviation and distinct grey levels of the viewport canvas."""
    result: dict[str, float] = page.evaluate("""(selector) => {
        const canvas = document.querySelector(selector);
        const context = canvas.getContext('2d');
        const {data} = context.getImageData(0, 0, canvas.width, canvas.height);
        let sum = 0, sumSquares = 0, count = 0;
        const levels = new Set();
        for (let i = 0; i < data.length; i += 4) {
            const grey = (data[i] + data[i + 1] + data[i + 2]) / 3;
            sum += grey; sumSquares += grey * grey; count += 1; levels.add(Math.round(grey));
        }
        const mean = sum / count;
        return {mean, std: Math.sqrt(sumSquares / count - mean * mean),
                levels: levels.size, width: canvas.width, height: canvas.height};
    }""", CANVAS)
    return result


def _wait_for_image(page: Page) -> dict[str, float]:
    """The viewport canvas's statistics once it shows a varied image (or after 30 s)."""
    page.wait_for_selector(CANVAS)
    stats: dict[str, float] = {}
    for _ in range(60):
        stats = _canvas_statistics(page)
        if stats["std"] > 20 and stats["levels"] > 64:
            break
        page.wait_for_timeout(500)
    return stats


def test_opening_a_study_renders_its_image(
    ohif_page: tuple[Page, list[str]], live_node: LiveNode,
) -> None:
    """The radiograph is drawn on the viewport canvas: real, varied pixels, not a blank;
    the series thumbnails are rendered by the node."""
    page, problems = ohif_page
    study = live_node.studies["doe"]
    log_in(page, live_node, "hgreg")
    page.goto(f"{live_node.url}/viewer/viewer?StudyInstanceUIDs={quote(study.study_uid)}")
    thumbnails: list[Response] = []
    page.on("response", lambda r: thumbnails.append(r)
            if r.url.split("?")[0].endswith("/thumbnail") else None)
    stats = _wait_for_image(page)
    screenshot(page, "ohif-study.png")
    assert stats["std"] > 20 and stats["levels"] > 64, stats
    # The study panel's thumbnails are the node's rendered JPEGs.
    assert thumbnails and all(r.status == 200 and r.header_value("content-type") == "image/jpeg"
                              for r in thumbnails), [(r.status, r.url) for r in thumbnails]
    expect(page.get_by_text("Something went wrong")).to_have_count(0)
    assert not problems, problems


def test_draft_sr_opens_in_the_sr_view_with_its_text(
    ohif_page: tuple[Page, list[str]], live_node: LiveNode,
) -> None:
    """The draft SR is a series of the study in OHIF's study panel; opened, OHIF's SR view
    shows the draft's findings and impression."""
    page, problems = ohif_page
    study = live_node.studies["garcia"]
    log_in(page, live_node, "hgreg")
    page.goto(f"{live_node.url}/viewer/viewer?StudyInstanceUIDs={quote(study.study_uid)}")
    _wait_for_image(page)  # the radiograph first, as a reader sees it
    series = page.get_by_text("SYNTHETIC AI DRAFT - NOT FOR DIAGNOSTIC USE", exact=True)
    expect(series).to_be_visible()
    series.dblclick()
    expect(page.get_by_text("Large right pneumothorax with mediastinal shift to the left.",
                            exact=True)).to_be_visible()
    expect(page.get_by_text("Impression: Large right pneumothorax. Urgent clinical "
                            "correlation.", exact=True)).to_be_visible()
    expect(page.get_by_text("Observer Type: Device", exact=True)).to_be_visible()
    screenshot(page, "ohif-draft-sr.png")
    expect(page.get_by_text("Something went wrong")).to_have_count(0)
    assert not problems, problems


def test_a_compressed_image_is_decoded_in_the_browser(
    ohif_page: tuple[Page, list[str]], live_node: LiveNode,
) -> None:
    """A JPEG 2000 image is sent as stored and decoded by OHIF's WebAssembly codec in a
    web worker, under the viewer's Content Security Policy."""
    page, problems = ohif_page
    study = seed_drafted_study(live_node.database, live_node.store, patient_name="KIM^MIN",
                               patient_id="PID-1005", accession="ACC2004", seed=5,
                               image=phantom(105), transfer_syntax=JPEG2000Lossless)
    frames: list[Response] = []
    page.on("response", lambda r: frames.append(r) if "/frames/" in r.url else None)
    log_in(page, live_node, "hgreg")
    page.goto(f"{live_node.url}/viewer/viewer?StudyInstanceUIDs={quote(study.study_uid)}")
    stats = _wait_for_image(page)
    screenshot(page, "ohif-study-jpeg2000.png")
    assert stats["std"] > 20 and stats["levels"] > 64, stats
    assert frames and all(r.status == 200 for r in frames)
    assert all('type="image/jp2"' in (r.header_value("content-type") or "") for r in frames), [
        r.header_value("content-type") for r in frames]
    assert not problems, problems
