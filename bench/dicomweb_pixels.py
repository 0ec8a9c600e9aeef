"""DICOMweb pixel resources against Orthanc's REST equivalents, in one run.

One chest radiograph of 2500 x 2048 pixels, 12 bits, stored JPEG-LS lossless (DCMTK), is
put into the node (its ingestor, its DICOMweb router under uvicorn) and into Orthanc
(REST upload). Each pair of requests below is timed alternately, keep-alive connections,
and the median and the ratio node / Orthanc are reported:

* decoded frame: node ``frames/1`` (native bytes) — Orthanc ``frames/0/numpy``;
* stored frame: node ``frames/1`` with ``transfer-syntax=*`` — Orthanc ``frames/0/raw``;
* rendered: node ``rendered`` (JPEG, quality 90) — Orthanc ``frames/0/rendered``
  (JPEG, quality 90);
* thumbnail: node ``thumbnail`` (128 pixels) — Orthanc ``frames/0/rendered`` at 128 pixels;
* rendered, repeated: the node's answer from its cache of renderings — Orthanc as above.

The node's cache of renderings is emptied before each of its requests except the last pair.

Run::

    PYTHONPATH=$PWD .venv/bin/python bench/dicomweb_pixels.py --requests 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from pydicom import dcmread

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from node.dicom.ingest import InstanceIngestor  # noqa: E402
from node.runtime import Database  # noqa: E402
from node.storage import InstanceStore  # noqa: E402
from node.web.dicomweb import build_dicomweb_router  # noqa: E402
from node.web.wado_rendered import forget_renderings  # noqa: E402
from tests.conftest import free_port, make_settings  # noqa: E402
from tests.dicom_factory import compress_with_dcmtk, make_cxr_dataset, write_dataset  # noqa: E402
from tests.integration.qr_archive import ingest_files  # noqa: E402
from tests.orthanc import running_orthanc  # noqa: E402

OHIF_ACCEPT = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _serve(folder: Path, image: Path) -> tuple[str, uvicorn.Server, threading.Thread]:
    settings = make_settings(folder, f"sqlite:///{folder / 'radnode.db'}")
    database = Database.from_settings(settings, migrate=True)
    store = InstanceStore(folder / "storage", min_free_mb=1, max_used_percent=100)
    ingest_files(InstanceIngestor(store, database.sessions), [image])
    app = FastAPI()
    app.include_router(build_dicomweb_router(database.sessions, store), prefix="/dicomweb")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/dicomweb", server, thread


def _median_ms(call: Callable[[], httpx.Response], times: list[float]) -> None:
    start = time.perf_counter()
    response = call()
    times.append((time.perf_counter() - start) * 1000)
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url} answered {response.status_code}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        ds = make_cxr_dataset(rows=2500, cols=2048, bits=12, seed=7)
        plain = write_dataset(ds, folder / "plain.dcm")
        image = compress_with_dcmtk(plain, folder / "jls.dcm", "jpegls_lossless")
        uids = dcmread(image, stop_before_pixels=True)
        path = (f"/studies/{uids.StudyInstanceUID}/series/{uids.SeriesInstanceUID}"
                f"/instances/{uids.SOPInstanceUID}")
        base, server, thread = _serve(folder / "node", image)
        node = httpx.Client(base_url=base, timeout=60)
        with running_orthanc(folder / "orthanc") as orthanc:
            peer = httpx.Client(base_url=f"http://127.0.0.1:{orthanc.http_port}", timeout=60)
            orthanc_id = peer.post("/instances", content=image.read_bytes()).json()["ID"]
            frame = f"/instances/{orthanc_id}/frames/0"
            jpeg = {"Accept": "image/jpeg"}

            def cold(url: str) -> httpx.Response:
                forget_renderings()
                return node.get(url, headers=jpeg)

            pairs: dict[str, tuple[Callable[[], httpx.Response],
                                   Callable[[], httpx.Response]]] = {
                "decoded frame": (lambda: node.get(f"{path}/frames/1"),
                                  lambda: peer.get(f"{frame}/numpy")),
                "stored frame": (lambda: node.get(f"{path}/frames/1",
                                                  headers={"Accept": OHIF_ACCEPT}),
                                 lambda: peer.get(f"{frame}/raw")),
                "rendered JPEG": (lambda: cold(f"{path}/rendered"),
                                  lambda: peer.get(f"{frame}/rendered", headers=jpeg,
                                                   params={"quality": 90})),
                "thumbnail JPEG": (lambda: cold(f"{path}/thumbnail"),
                                   lambda: peer.get(f"{frame}/rendered", headers=jpeg,
                                                    params={"width": 128, "height": 128,
                                                            "quality": 90})),
                "rendered, again": (lambda: node.get(f"{path}/rendered", headers=jpeg),
                                    lambda: peer.get(f"{frame}/rendered", headers=jpeg,
                                                     params={"quality": 90})),
            }
            results = {}
            for name, (ours, theirs) in pairs.items():
                ours_ms: list[float] = []
                theirs_ms: list[float] = []
                for _ in range(2):  # warm-up
                    ours(), theirs()
                for _ in range(args.requests):
                    _median_ms(ours, ours_ms)
                    _median_ms(theirs, theirs_ms)
                mine, other = statistics.median(ours_ms), statistics.median(theirs_ms)
                results[name] = {"radnode_ms": round(mine, 1), "orthanc_ms": round(other, 1),
                                 "ratio": round(mine / other, 2)}
                print(f"{name:16s} radnode {mine:8.1f} ms   Orthanc {other:8.1f} ms   "
                      f"ratio {mine / other:5.2f}")
        server.should_exit = True
        thread.join(timeout=10)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
