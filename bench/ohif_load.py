"""First load of the OHIF Viewer served by the node: gzipped against identity transfer.

A node (SQLite, one drafted study with a 512 x 512 radiograph) serves the installed viewer
(``make ohif``); Debian's Chromium, in a fresh profile per run (cold cache), signs in and
opens the study at ``/viewer/viewer?StudyInstanceUIDs=…`` until the radiograph is drawn.
Each run is made twice, alternating: once as Chromium asks (``Accept-Encoding: gzip, …``,
the node sends scripts, styles and WebAssembly gzipped) and once with
``Accept-Encoding: identity``, over loopback and over an emulated link (Chromium's
network emulation, default 100 Mbit/s, 2 ms latency)::

    python bench/ohif_load.py --runs 3 --json OUT.json

One unmeasured load of each kind comes first (the node rewrites and gzips each file once,
on its first request). It prints the bytes Chromium received for the viewer's files
(encoded body sizes) and the time from navigation to the drawn image, median per mode,
and their ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from playwright.sync_api import BrowserContext, sync_playwright  # noqa: E402

from node.runtime import Database  # noqa: E402
from node.storage import InstanceStore  # noqa: E402
from node.users import use_password_hasher  # noqa: E402
from node.web import create_app  # noqa: E402
from node.web.server import WebServer  # noqa: E402
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, OHIF_DIST, phantom  # noqa: E402
from tests.conftest import free_port, make_settings  # noqa: E402
from tests.integration.web_seed import (  # noqa: E402
    FAST_HASHER,
    PASSWORD,
    RecordingExporter,
    RecordingQueue,
    seed_drafted_study,
    seed_user,
    write_bundle_manifest,
)

DRAWN = """() => {
    const canvas = document.querySelector('canvas.cornerstone-canvas');
    if (!canvas || !canvas.width) return false;
    const {data} = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
    let sum = 0, squares = 0;
    for (let i = 0; i < data.length; i += 4) { sum += data[i]; squares += data[i] * data[i]; }
    const n = data.length / 4, mean = sum / n;
    return Math.sqrt(squares / n - mean * mean) > 20;
}"""


def one_load(context: BrowserContext, url: str, study_uid: str,
             link: tuple[float, float] | None) -> tuple[int, float]:
    """Sign in, open the study; return (viewer bytes received, seconds to the image)."""
    page = context.new_page()
    if link is not None:
        session = context.new_cdp_session(page)
        mbit, latency_ms = link
        session.send("Network.enable")
        session.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": latency_ms,
            "downloadThroughput": mbit * 1e6 / 8, "uploadThroughput": mbit * 1e6 / 8})
    page.goto(f"{url}/login")
    page.fill("input[name=username]", "reader")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")
    received: list[int] = []

    def count(response: Any) -> None:
        if "/viewer/" in response.url:
            response.finished()
            received.append(max(response.request.sizes()["responseBodySize"], 0))

    page.on("response", count)
    start = time.perf_counter()
    page.goto(f"{url}/viewer/viewer?StudyInstanceUIDs={study_uid}")
    page.wait_for_function(DRAWN, polling=100, timeout=300_000)
    elapsed = time.perf_counter() - start
    page.close()
    return sum(received), elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mbit", type=float, default=100.0)
    parser.add_argument("--latency-ms", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (OHIF_DIST / "index.html").is_file():
        print(f"the OHIF Viewer is not installed in {OHIF_DIST}: run `make ohif`",
              file=sys.stderr)
        return 2
    use_password_hasher(FAST_HASHER)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        settings = make_settings(
            root, f"sqlite:///{root / 'radnode.db'}",
            web={"secret_key_file": str(root / "web-secret.key"), "ohif_dist": str(OHIF_DIST)},
            model={"bundle": str(write_bundle_manifest(root / "bundle"))})
        database = Database.from_settings(settings, migrate=True)
        store = InstanceStore(settings.storage.root, min_free_mb=1, max_used_percent=100)
        seed_user(database, "reader")
        study = seed_drafted_study(database, store, image=phantom(7))
        app = create_app(settings, database, store, RecordingExporter(),  # type: ignore[arg-type]
                         RecordingQueue())
        server = WebServer(app, "127.0.0.1", free_port())
        server.start()
        results: dict[str, dict[str, list[float]]] = {}
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                     args=CHROMIUM_ARGS)
                # One load of each kind first: the node prepares each file once (rewrite,
                # gzip) and the timed loads measure serving, not that.
                for headers in ({}, {"Accept-Encoding": "identity"}):
                    context = browser.new_context(extra_http_headers=headers)
                    one_load(context, server.url, study.study_uid, None)
                    context.close()
                links = {"loopback": None, f"{args.mbit:g} Mbit/s": (args.mbit, args.latency_ms)}
                for name, link in links.items():
                    for _ in range(args.runs):
                        for mode, headers in (("gzip", {}),
                                              ("identity", {"Accept-Encoding": "identity"})):
                            context = browser.new_context(viewport={"width": 1440,
                                                                    "height": 900},
                                                          extra_http_headers=headers)
                            size, seconds = one_load(context, server.url, study.study_uid, link)
                            context.close()
                            entry = results.setdefault(f"{name} {mode}",
                                                       {"bytes": [], "seconds": []})
                            entry["bytes"].append(size)
                            entry["seconds"].append(seconds)
                browser.close()
        finally:
            server.stop()
            database.engine.dispose()
    summary = {key: {"bytes": statistics.median(v["bytes"]),
                     "seconds": statistics.median(v["seconds"]), "runs": v}
               for key, v in results.items()}
    for key, value in summary.items():
        print(f"{key:>24}: {value['bytes'] / 1e6:7.1f} MB received, "
              f"{value['seconds']:6.2f} s to the image (median of {args.runs})")
    for name in ("loopback", f"{args.mbit:g} Mbit/s"):
        gz, plain = summary[f"{name} gzip"], summary[f"{name} identity"]
        print(f"{name}: gzip/identity bytes {gz['bytes'] / plain['bytes']:.2f}, "
              f"time {gz['seconds'] / plain['seconds']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
