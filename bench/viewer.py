"""Window/level frame time of the study viewer in Chromium, against the server round trip.

Run on its own::

    .venv/bin/python bench/viewer.py                  # 2000 x 2500, 16-bit, 300 drag events
    .venv/bin/python bench/viewer.py --gpu            # without --disable-gpu (a real GPU)
    .venv/bin/python bench/viewer.py --rows 1000 --columns 800 --events 200

A node's web app (SQLite, one study) serves a ``--columns`` x ``--rows`` 16-bit phantom;
Debian's ``/usr/bin/chromium`` (headless, driven by Playwright; ``--disable-gpu`` unless
``--gpu``, so WebGL runs on SwiftShader, Chromium's CPU implementation) opens the study
page and a right-button drag of ``--events`` mouse moves changes the window. For each
renderer (``auto``: the viewer's own choice, the 2D lookup table when WebGL2 runs in
software; ``webgl2`` and ``canvas2d`` forced with ``?renderer=``) it reports:

* ``frame``: the intervals between the requestAnimationFrame callbacks that drew a new
  window during the drag (what the radiologist sees; 16.7 ms at 60 Hz);
* ``draw``: the script time of one draw, ``gl.finish`` included, in a second drag (for
  WebGL this leaves out the GPU process's readback and compositing, which the frame
  interval includes).

The peer is the server round trip the viewer used before: the PNG rendered by the node
for a window (``/image/{id}.png?wc=&ww=``), fetched and decoded by the page, for
``--round-trips`` distinct windows. The ratio is the peer's median over the median
frame interval.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from node.runtime import Database  # noqa: E402
from node.states import ReportState  # noqa: E402
from node.storage import InstanceStore  # noqa: E402
from node.users import use_password_hasher  # noqa: E402
from node.web import create_app  # noqa: E402
from node.web.server import WebServer  # noqa: E402
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.conftest import free_port, make_settings  # noqa: E402
from tests.integration.web_seed import (  # noqa: E402
    FAST_HASHER,
    PASSWORD,
    RecordingExporter,
    RecordingQueue,
    seed_user,
    write_bundle_manifest,
)
from tests.viewer_seed import add_report, add_study, phantom_dataset, store_dataset  # noqa: E402

ROUND_TRIP = """async ([url, windows]) => {
  const times = [];
  for (const [center, width] of windows) {
    const started = performance.now();
    const response = await fetch(`${url}?wc=${center}&ww=${width}`, {credentials: "same-origin"});
    const bitmap = await createImageBitmap(await response.blob());
    bitmap.close();
    times.push(performance.now() - started);
  }
  return times;
}"""


def phantom(rows: int, columns: int, seed: int = 7) -> np.ndarray:
    """A 16-bit image with structure at every scale (gradients, disks, noise)."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:columns].astype(np.float64)
    values = 20000 + 15000 * np.sin(c / 97.0) * np.cos(r / 131.0) + 8 * c + 4 * r
    values += rng.normal(0, 400, size=values.shape)
    return np.clip(values, 0, 65535).astype(np.uint16)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2)}


def drag(page: Page, events: int, sync: bool) -> list[dict[str, float]]:
    """Right-drag ``events`` moves across the viewport; the frames drawn meanwhile."""
    page.evaluate(f"() => {{ const v = window.radnodeViewer; v.syncTiming = {str(sync).lower()};"
                  " v.frames.length = 0; }")
    box = page.locator("#viewport").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down(button="right")
    for i in range(1, events + 1):
        # back and forth, so every move is a new window
        phase = (i % 100) - 50
        page.mouse.move(x + 2 * phase, y + phase)
    page.mouse.up(button="right")
    page.wait_for_timeout(200)
    frames: list[dict[str, float]] = page.evaluate("() => window.radnodeViewer.frames.slice()")
    return frames


def measure(page: Page, url: str, study_id: int, events: int, renderer: str) -> dict[str, Any]:
    started = time.perf_counter()
    query = f"?renderer={renderer}" if renderer != "auto" else ""
    page.goto(f"{url}/studies/{study_id}{query}")
    page.wait_for_selector("#viewport[data-loaded='1']", timeout=120_000)
    loaded_s = time.perf_counter() - started
    renderer = page.get_attribute("#viewport", "data-renderer")
    drag(page, 20, sync=False)  # warm-up
    frames = drag(page, events, sync=False)
    intervals = [b["at"] - a["at"] for a, b in zip(frames, frames[1:], strict=False)]
    timed = drag(page, events, sync=True)
    scale = page.evaluate("() => window.radnodeViewer.view.scale * devicePixelRatio")
    return {"renderer": renderer, "page_load_s": round(loaded_s, 2),
            "screen_pixels_per_image_pixel": round(scale, 3),
            "frames_drawn": len(frames), "frame": percentiles(intervals),
            "draw": percentiles([f["ms"] for f in timed])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--columns", type=int, default=2000)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--round-trips", type=int, default=20)
    parser.add_argument("--gpu", action="store_true", help="leave out --disable-gpu")
    parser.add_argument("--renderers", default="auto,webgl2,canvas2d",
                        help="comma-separated, from auto, webgl2, canvas2d (auto first: the "
                             "peer runs with it)")
    args = parser.parse_args(argv)
    if args.events < 200:
        parser.error("--events must be at least 200")
    renderers = args.renderers.split(",")
    if renderers[0] != "auto" or not set(renderers) <= {"auto", "webgl2", "canvas2d"}:
        parser.error("--renderers: auto first, then webgl2 and/or canvas2d")
    use_password_hasher(FAST_HASHER)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        settings = make_settings(root, f"sqlite:///{root / 'radnode.db'}",
                                 web={"secret_key_file": str(root / "web-secret.key")},
                                 model={"bundle": str(write_bundle_manifest(root / "bundle"))})
        database = Database.from_settings(settings, migrate=True)
        store = InstanceStore(settings.storage.root, min_free_mb=1, max_used_percent=100)
        seed_user(database, "bench")
        study = add_study(database, patient_id="BENCH-1")
        ds = phantom_dataset(study, phantom(args.rows, args.columns),
                             windows=[(20000.0, 30000.0)], PixelSpacing=["0.15", "0.15"])
        instance_id = store_dataset(database, store, study, ds)
        add_report(database, study, ReportState.DRAFT, findings="F.", impression="I.")
        app = create_app(settings, database, store, RecordingExporter(),  # type: ignore[arg-type]
                         RecordingQueue())
        server = WebServer(app, "127.0.0.1", free_port())
        server.start()
        chromium_args = [a for a in CHROMIUM_ARGS if not (args.gpu and a == "--disable-gpu")]
        results: dict[str, Any] = {
            "image": f"{args.columns} x {args.rows}, 16-bit", "events": args.events,
            "chromium_args": chromium_args, "machine": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "load_average_before": os.getloadavg()}
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                     args=chromium_args)
                for name in renderers:
                    context = browser.new_context(viewport={"width": 1440, "height": 900})
                    page = context.new_page()
                    page.goto(f"{server.url}/login")
                    page.fill("input[name=username]", "bench")
                    page.fill("input[name=password]", PASSWORD)
                    page.click("button[type=submit]")
                    page.wait_for_url(f"{server.url}/")
                    results[name] = measure(page, server.url, study.id, args.events, name)
                    if name == "auto":
                        results["gl_renderer"] = page.evaluate(
                            "() => { const gl = document.createElement('canvas')"
                            ".getContext('webgl2'); const d = gl && gl.getExtension("
                            "'WEBGL_debug_renderer_info'); return d ? gl.getParameter("
                            "d.UNMASKED_RENDERER_WEBGL) : null; }")
                        windows = [[15000 + 500 * i, 20000 + 700 * i]
                                   for i in range(args.round_trips)]
                        url = f"{server.url}/studies/{study.id}/image/{instance_id}.png"
                        results["server_png"] = percentiles(page.evaluate(ROUND_TRIP,
                                                                          [url, windows]))
                    context.close()
                browser.close()
        finally:
            server.stop()
            database.engine.dispose()
    results["load_average_after"] = os.getloadavg()
    frame = results["auto"]["frame"]["median_ms"]
    results["ratio_server_png_over_auto_frame"] = round(
        results["server_png"]["median_ms"] / frame, 1) if frame else None
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
