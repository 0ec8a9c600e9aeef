"""C-STORE latency of a node at rest and under a flood of logins with random usernames.

Run on its own::

    .venv/bin/python bench/login_flood.py                      # SQLite, default limits
    .venv/bin/python bench/login_flood.py --address-limit 1000000   # a distributed flood
    .venv/bin/python bench/login_flood.py --database-url postgresql+psycopg://...

One node process serves DICOM and the web app (uvicorn) with the production password
hasher (argon2-cffi's default Argon2id parameters). ``--stores`` images are sent one
association each, with pynetdicom, first at rest, then while ``--clients`` threads post
logins with random usernames as fast as the node answers. The figure is the ratio of the
median C-STORE latencies (flood / rest). ``--address-limit`` sets the failed logins
allowed per client address and window: the default (100) refuses most of a one-address
flood with a cheap 429; a very large value makes every attempt cost a full Argon2
verification, as a flood from many addresses would.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from node.config import Settings  # noqa: E402
from node.runtime import NodeServices  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.dicom_factory import make_cxr_dataset  # noqa: E402
from tests.integration.dicom_net import exchange  # noqa: E402
from tests.integration.web_seed import form_csrf  # noqa: E402


def _settings(folder: Path, database_url: str, address_limit: int) -> Settings:
    return Settings(**{  # type: ignore[arg-type]
        "dicom": {"port": 0, "bind_address": "127.0.0.1"},
        "database": {"url": database_url or f"sqlite:///{folder / 'radnode.db'}"},
        "storage": {"root": str(folder / "storage"), "min_free_mb": 1},
        "model": {"bundle": str(folder / "no-model")},
        "logging": {"format": "text", "level": "ERROR"},
        "web": {"host": "127.0.0.1", "port": free_port(),
                "secret_key_file": str(folder / "web.key"),
                "login_max_failures_per_address": address_limit},
    })


def _store_latencies(port: int, count: int, seed: int) -> list[float]:
    latencies: list[float] = []
    for index in range(count):
        ds = make_cxr_dataset(patient_name=f"BENCH^{seed}^{index}", seed=seed + index)
        started = time.perf_counter()
        result = exchange(port, [ds], sop_classes=[str(ds.SOPClassUID)])
        latencies.append(time.perf_counter() - started)
        if result.statuses != [0x0000]:
            raise RuntimeError(f"C-STORE failed: {result.statuses}")
    return latencies


def _flood(url: str, stop: threading.Event, statuses: Counter[int]) -> None:
    with httpx.Client(base_url=url, follow_redirects=False, timeout=120) as client:
        while not stop.is_set():
            page = client.get("/login")
            response = client.post("/login", data={
                "username": f"guess-{uuid.uuid4().hex[:12]}", "password": "a password guess",
                "csrf_token": form_csrf(page.text)})
            statuses[response.status_code] += 1


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 1)}


def run(database_url: str, stores: int, clients: int, address_limit: int) -> dict[str, Any]:
    """Measure; return the figures."""
    with tempfile.TemporaryDirectory(prefix="radnode-flood-") as folder:
        services = NodeServices.build(_settings(Path(folder), database_url, address_limit),
                                      with_web=True)
        assert services.web is not None
        services.listener.start()
        services.web.start()
        stop = threading.Event()
        statuses: Counter[int] = Counter()
        threads = [threading.Thread(target=_flood, args=(services.web.url, stop, statuses))
                   for _ in range(clients)]
        try:
            _store_latencies(services.listener.port, 3, 900)  # warm up
            rest = _store_latencies(services.listener.port, stores, 0)
            for thread in threads:
                thread.start()
            time.sleep(3.0)
            flood_started = time.perf_counter()
            flood = _store_latencies(services.listener.port, stores, 1000)
            flood_seconds = time.perf_counter() - flood_started
        finally:
            stop.set()
            for thread in threads:
                thread.join(120)
            services.web.stop()
            services.listener.stop()
            services.work_queue.close()
            services.database.engine.dispose()
    at_rest, flooded = _summary(rest), _summary(flood)
    return {
        "database": "postgresql" if database_url.startswith("postgresql") else "sqlite",
        "stores": stores, "clients": clients, "address_limit": address_limit,
        "rest": at_rest, "flood": flooded,
        "ratio_median": round(flooded["median_ms"] / at_rest["median_ms"], 2),
        "logins": dict(sorted(statuses.items())),
        "logins_per_second": round(sum(statuses.values()) / max(flood_seconds, 1e-9), 1),
        "machine": f"{os.cpu_count()} CPU, {platform.python_implementation()} "
                   f"{platform.python_version()}",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    parser.add_argument("--stores", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--address-limit", type=int, default=100)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.database_url, args.stores, args.clients, args.address_limit),
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
