"""A running web app (uvicorn on a free port, SQLite, seeded studies) and a headless Chromium.

Chromium is Debian's ``/usr/bin/chromium`` driven by Playwright; Playwright's own browser
downloads are never used. Screenshots go to ``test-artifacts/``; with
``RADNODE_UPDATE_SCREENSHOTS=1`` they are also copied to ``docs/screenshots/``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from node.db.types import utcnow
from node.exports.service import note_destination_outcome
from node.runtime import Database
from node.states import ExportState, Role, StudyState
from node.storage import InstanceStore
from node.users import use_password_hasher
from node.web import create_app
from node.web.server import WebServer
from tests.conftest import REPO_ROOT, free_port, make_settings
from tests.integration.web_seed import (
    DESTINATION,
    FAST_HASHER,
    PASSWORD,
    RecordingExporter,
    RecordingQueue,
    SeededStudy,
    seed_drafted_study,
    seed_failed_export,
    seed_failed_job,
    seed_study,
    seed_user,
    write_bundle_manifest,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
ARTIFACTS = REPO_ROOT / "test-artifacts"
#: The OHIF Viewer that ``make ohif`` installs (``make test`` runs it first).
OHIF_DIST = REPO_ROOT / "var" / "ohif" / "dist"
DOCS_SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
#: Read at import: the suite's autouse fixture clears ``RADNODE_*`` variables per test.
UPDATE_DOCS = os.environ.get("RADNODE_UPDATE_SCREENSHOTS") == "1"
#: The screenshots the documentation shows.
DOCUMENTED = frozenset({"worklist.png", "study.png", "triage.png", "monitoring.png",
                        "ohif-study-list.png", "ohif-study.png", "ohif-draft-sr.png"})


def phantom(seed: int) -> NDArray[np.uint16]:
    """A 12-bit chest radiograph phantom (ribs, vessels, heart), as the demo sends."""
    from workers.inference.synth.phantom import random_phantom

    return np.asarray(random_phantom(seed, size=512, bits=12).pixels, dtype=np.uint16)


@dataclass
class LiveNode:
    """The served app and what the tests look at."""

    url: str
    database: Database
    store: InstanceStore
    queue: RecordingQueue
    exporter: RecordingExporter
    studies: dict[str, SeededStudy]
    failed_export_id: int


@pytest.fixture(scope="module")
def live_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNode]:
    """The web app on a free port over a seeded SQLite database."""
    root = tmp_path_factory.mktemp("browser-node")
    previous_hasher = use_password_hasher(FAST_HASHER)
    settings = make_settings(
        root, f"sqlite:///{root / 'radnode.db'}",
        web={"secret_key_file": str(root / "web-secret.key"),
             # Short reading-room intervals keep the browser tests fast.
             "autosave_seconds": 0.3, "presence_heartbeat_seconds": 0.5,
             "presence_expiry_seconds": 3.0, "ohif_dist": str(OHIF_DIST)},
        destinations=[DESTINATION],
        model={"bundle": str(write_bundle_manifest(root / "bundle"))},
    )
    database = Database.from_settings(settings, migrate=True)
    store = InstanceStore(settings.storage.root, min_free_mb=1, max_used_percent=100)
    seed_user(database, "hgreg", display_name="House^Gregory",
              organization="Princeton-Plainsboro")
    seed_user(database, "lcuddy", Role.ADMIN, display_name="Cuddy^Lisa")
    seed_user(database, "jwilson", display_name="Wilson^James",
              organization="Princeton-Plainsboro")
    now = utcnow()
    studies = {
        "doe": seed_drafted_study(database, store, patient_name="DOE^JANE",
                                  patient_id="PID-1001", accession="ACC2000", images=2,
                                  received_at=now - dt.timedelta(minutes=95),
                                  image=phantom(101)),
        "garcia": seed_drafted_study(
            database, store, patient_name="GARCIA^MARIA", patient_id="PID-1003",
            accession="ACC2002", urgent=True, urgent_findings=["pneumothorax"],
            received_at=now - dt.timedelta(minutes=12), seed=3, image=phantom(102),
            findings="Large right pneumothorax with mediastinal shift to the left.",
            impression="Large right pneumothorax. Urgent clinical correlation."),
        "smith": seed_drafted_study(database, store, patient_name="SMITH^JOHN",
                                    patient_id="PID-1002", accession="ACC2001",
                                    received_at=now - dt.timedelta(minutes=70), seed=1,
                                    image=phantom(103)),
        "nguyen": seed_drafted_study(database, store, patient_name="NGUYEN^BAO",
                                     patient_id="PID-1004", accession="ACC2003",
                                     received_at=now - dt.timedelta(minutes=40), seed=2,
                                     image=phantom(104)),
    }
    seed_failed_job(database)
    _, export_id = seed_failed_export(database, store)
    seed_failed_export(database, store, state=ExportState.RETRYING, destination_ae="ARCHIVE")
    with database.sessions.begin() as session:
        note_destination_outcome(session, "PACS", now - dt.timedelta(minutes=9))
        for minutes in (50, 20, 5):
            note_destination_outcome(session, "ARCHIVE", now - dt.timedelta(minutes=minutes),
                                     "connection to 10.1.4.20:104 refused")
    seed_study(database, patient_name="LEE^ANNA", patient_id="PID-2001", accession="ACC3001",
               state=StudyState.IGNORED, state_reason="modality is not CR or DX")
    queue, exporter = RecordingQueue(), RecordingExporter()
    app = create_app(settings, database, store, exporter, queue)  # type: ignore[arg-type]
    server = WebServer(app, "127.0.0.1", free_port())
    server.start()
    try:
        yield LiveNode(server.url, database, store, queue, exporter, studies, export_id)
    finally:
        server.stop()
        database.engine.dispose()
        use_password_hasher(previous_hasher)


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Playwright]:
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="session")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    """Headless Debian Chromium."""
    assert CHROMIUM.exists(), "Debian's chromium is missing: run `make system-deps`"
    browser = playwright_instance.chromium.launch(executable_path=str(CHROMIUM),
                                                  args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) with a desktop-sized window."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(15_000)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A page that fails the test on script errors and Content Security Policy violations."""
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(f"console: {message.text}")
            if message.type == "error" and "status of 40" not in message.text else None)
    yield page
    assert not problems, problems


def log_in(page: Page, node: LiveNode, username: str) -> None:
    """Sign in through the login form."""
    page.goto(f"{node.url}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{node.url}/")


def screenshot(page: Page, name: str, *, full_page: bool = False) -> Path:
    """Save a screenshot to ``test-artifacts/`` (and ``docs/screenshots/`` when asked)."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    page.screenshot(path=str(target), full_page=full_page)
    if UPDATE_DOCS and name in DOCUMENTED:
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, DOCS_SCREENSHOTS / name)
    return target


def desktop_context(browser: Browser) -> BrowserContext:
    """A browser context with a desktop window and a 15 s default timeout."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(15_000)
    return context


def page_recording_errors(context: BrowserContext) -> tuple[Page, list[str]]:
    """A new page and the list its uncaught script errors are appended to."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page, errors
