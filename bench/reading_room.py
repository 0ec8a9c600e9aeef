"""Reading-room latency in a real browser: from "Sign and next" to the next study on screen.

Run on its own::

    .venv/bin/python bench/reading_room.py                  # 25 studies, 512 px, SQLite
    .venv/bin/python bench/reading_room.py --studies 40 --size 2048 --dwell 3 --json r.json
    .venv/bin/python bench/reading_room.py --database-url postgresql+psycopg://...

The web app (uvicorn, in this process) serves a database seeded the way the demo's studies
look: a PA and a lateral 12-bit phantom radiograph per study (``--size`` pixels square) and
an AI draft. Debian's Chromium (``/usr/bin/chromium``, headless, driven by Playwright) signs
in as a radiologist and opens the first study of the worklist. Two walks over the same
``--studies`` studies, in worklist order:

1. **next** (the peer): <kbd>Alt</kbd>+<kbd>→</kbd> opens the next study without signing;
2. **sign and next**: <kbd>Ctrl</kbd>+<kbd>Shift</kbd>+<kbd>Enter</kbd> signs the draft
   (a verified SR written and fsynced, exports queued, agreement recorded) and opens the
   next study.

Each step is timed in the browser, from the key press (a capturing ``keydown`` listener) to
the moment the viewer has drawn the next study's image (its first frame from the full-depth
values, ``data-drawn`` on the viewport, and the next animation frame) with its draft text in
the report field. The split: until the next page's
navigation starts (the sign-off request for "sign and next"), and from there to the image
on screen, with, from the navigation start, when the page's HTML and the image's 16-bit values had
arrived (Navigation and Resource Timing). The figure is the median and 95th percentile of
each walk, and the ratio of the medians (sign and next / next). ``--dwell`` waits on each
study before the key press, as a reader does (0 by default: the worst case, where the node
has had no time to prepare the next study). Not a test: nothing fails on a slow machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from playwright.sync_api import Page, sync_playwright  # noqa: E402

from node.db.engine import Database  # noqa: E402
from node.db.types import utcnow  # noqa: E402
from node.storage import InstanceStore  # noqa: E402
from node.users import use_password_hasher  # noqa: E402
from node.web import create_app  # noqa: E402
from node.web import study as study_routes  # noqa: E402
from node.web.server import WebServer  # noqa: E402
from tests.conftest import free_port, make_settings  # noqa: E402
from tests.integration.web_seed import (  # noqa: E402
    DESTINATION,
    FAST_HASHER,
    PASSWORD,
    RecordingExporter,
    RecordingQueue,
    seed_drafted_study,
    seed_user,
    write_bundle_manifest,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
#: Demo-like drafts (the demo's findings, in its words), cycled over the studies.
DRAFTS = [
    ("Heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
     "No acute cardiopulmonary abnormality."),
    ("Small left pleural effusion with blunting of the costophrenic angle. Heart size normal.",
     "Small left pleural effusion."),
    ("The cardiac silhouette is enlarged. Perihilar haziness and septal lines.",
     "Cardiomegaly with interstitial oedema."),
    ("Airspace opacity in the right lower zone. No effusion.",
     "Right lower lobe consolidation."),
    ("Endotracheal tube tip 4 cm above the carina. Right internal jugular line in the SVC.",
     "Support devices in satisfactory position."),
]
#: Runs in every page: the key press time (kept across the navigation in sessionStorage)
#: and, once the image is decoded and painted with the draft text in place, the timings.
TIMING_SCRIPT = """
(() => {
  const now = () => performance.timeOrigin + performance.now();
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === "ArrowRight") {
      sessionStorage.setItem("bench:pressed", String(now()));
    }
  }, true);
  document.addEventListener("DOMContentLoaded", async () => {
    const viewport = document.getElementById("viewport");
    const findings = document.getElementById("findings");
    if (!viewport || !findings) return;
    await new Promise((resolve) => {
      const drawn = () => Number(viewport.dataset.drawn) > 0;
      if (drawn()) { resolve(); return; }
      new MutationObserver((changes, observer) => {
        if (drawn()) { observer.disconnect(); resolve(); }
      }).observe(viewport, { attributes: true, attributeFilter: ["data-drawn"] });
    });
    await new Promise((resolve) => requestAnimationFrame(resolve));
    if (!findings.value) return;
    const pressed = Number(sessionStorage.getItem("bench:pressed") || "NaN");
    sessionStorage.removeItem("bench:pressed");
    const entry = performance.getEntriesByType("navigation")[0];
    const image_entry = performance.getEntriesByType("resource")
      .filter((item) => item.name.includes("/pixels/") && item.name.includes(".u16"))[0];
    window.__benchReady = { pressed, navigation: performance.timeOrigin, ready: now(),
                            html: entry ? entry.responseEnd : NaN,
                            image: image_entry ? image_entry.responseEnd : NaN,
                            url: location.pathname };
  });
})();
"""


def _seed(folder: Path, database_url: str, studies: int, size: int) -> tuple[Any, ...]:
    from workers.inference.synth.phantom import random_phantom

    settings = make_settings(
        folder, database_url or f"sqlite:///{folder / 'radnode.db'}",
        web={"secret_key_file": str(folder / "web-secret.key")},
        destinations=[DESTINATION], logging={"format": "text", "level": "ERROR"},
        model={"bundle": str(write_bundle_manifest(folder / "bundle"))},
    )
    database = Database.from_settings(settings, migrate=True)
    store = InstanceStore(settings.storage.root, min_free_mb=1, max_used_percent=100)
    seed_user(database, "bench", display_name="Bench^Reader", organization="Bench")
    start = utcnow() - dt.timedelta(hours=2)
    for index in range(studies + 1):
        findings, impression = DRAFTS[index % len(DRAFTS)]
        pixels = np.asarray(random_phantom(1000 + index, size=size, bits=12).pixels,
                            dtype=np.uint16)
        seed_drafted_study(database, store, patient_name=f"BENCH^STUDY{index:03d}",
                           patient_id=f"BENCH-{index:04d}", accession=f"B{index:06d}",
                           images=2, seed=index, image=pixels, findings=findings,
                           impression=impression,
                           received_at=start + dt.timedelta(seconds=index))
    return settings, database, store


def _wait_ready(page: Page, previous_url: str | None) -> dict[str, Any]:
    page.wait_for_function(
        "(previous) => window.__benchReady && window.__benchReady.url !== previous",
        arg=previous_url, timeout=60_000)
    ready: dict[str, Any] = page.evaluate("window.__benchReady")
    return ready


def _walk(page: Page, steps: int, key: str, dwell: float) -> list[dict[str, float]]:
    samples: list[dict[str, float]] = []
    current = _wait_ready(page, None)
    for _ in range(steps):
        if dwell:
            page.wait_for_timeout(dwell * 1000)
        page.keyboard.press(key)
        ready = _wait_ready(page, current["url"])
        samples.append({"total_ms": ready["ready"] - ready["pressed"],
                        "until_navigation_ms": ready["navigation"] - ready["pressed"],
                        "page_to_image_ms": ready["ready"] - ready["navigation"],
                        "page_html_ms": ready["html"],
                        "page_image_response_ms": ready["image"]})
        current = ready
    return samples


def _summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        return {"median": round(statistics.median(ordered), 1), "p95": round(p95, 1),
                "min": round(ordered[0], 1), "max": round(ordered[-1], 1)}
    return {key: stats([s[key] for s in samples]) for key in samples[0]} | {
        "samples": len(samples)}


def run(studies: int, size: int, database_url: str, dwell: float = 0.0,
        warm: bool = True) -> dict[str, Any]:
    """Seed, serve, walk twice; return the figures."""
    if not warm:  # the study page no longer prepares the next study's images
        study_routes.warm_study_images = lambda ctx, study_id: None
    previous_hasher = use_password_hasher(FAST_HASHER)
    with tempfile.TemporaryDirectory(prefix="reading-bench-") as tmp:
        settings, database, store = _seed(Path(tmp), database_url, studies, size)
        app = create_app(settings, database, store,
                         RecordingExporter(), RecordingQueue())  # type: ignore[arg-type]
        server = WebServer(app, "127.0.0.1", free_port())
        server.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                     args=CHROMIUM_ARGS)
                context = browser.new_context(viewport={"width": 1440, "height": 900})
                context.add_init_script(TIMING_SCRIPT)
                page = context.new_page()
                page.goto(f"{server.url}/login")
                page.fill("input[name=username]", "bench")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url(f"{server.url}/")
                page.keyboard.press("ArrowDown")
                page.keyboard.press("Enter")
                first_url = _wait_ready(page, None)["url"]
                # Warm-up: one step each way, not counted.
                _walk(page, 1, "Alt+ArrowRight", dwell)
                page.goto(f"{server.url}{first_url}")
                started = time.perf_counter()
                peer = _walk(page, studies, "Alt+ArrowRight", dwell)
                page.goto(f"{server.url}{first_url}")
                signed = _walk(page, studies, "Control+Shift+Enter", dwell)
                elapsed = time.perf_counter() - started
                browser.close()
        finally:
            server.stop()
            database.engine.dispose()
            use_password_hasher(previous_hasher)
    sign_next, next_only = _summary(signed), _summary(peer)
    return {
        "studies": studies, "image_size": size, "images_per_study": 2, "dwell_seconds": dwell,
        "next_study_warmed": warm,
        "database": "postgresql" if database_url.startswith("postgresql") else "sqlite",
        "sign_and_next": sign_next, "next_without_signing": next_only,
        "ratio_median_sign_next_over_next": round(
            sign_next["total_ms"]["median"] / next_only["total_ms"]["median"], 2),
        "goal_ms": 300, "wall_seconds": round(elapsed, 1),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "chromium": CHROMIUM},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=25, help="steps per walk (>= 20)")
    parser.add_argument("--size", type=int, default=512, help="image matrix size (pixels)")
    parser.add_argument("--database-url", default="", help="SQLite in a temporary folder "
                        "by default")
    parser.add_argument("--dwell", type=float, default=0.0,
                        help="seconds on each study before the key press (reading time)")
    parser.add_argument("--no-warm", action="store_true",
                        help="the study page does not decode the next study's images ahead")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = run(args.studies, args.size, args.database_url, args.dwell, not args.no_warm)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
