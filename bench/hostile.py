"""Hostile peers against a node in its own process: memory under bombs, C-ECHO under slow peers.

    PYTHONPATH=$PWD python bench/hostile.py [--duration 60] [--interval 8] [--root DIR]

1. Bombs: a 1.4 MB deflated data set inflating to 1.5 GB and a 4 MB RLE image of
   16384 x 16384 pixels are sent by C-STORE; the node's status, the time to answer and
   its resident memory (now and peak, from /proc) are reported.
2. Slow peers: 10 peers trickle an A-ASSOCIATE-RQ (an AE not on the allow-list) and 10
   associate as an allow-listed AE and trickle a P-DATA PDU, one byte every ``interval``
   seconds, each from its own loopback address, reconnecting when cut off. An
   allow-listed C-ECHO runs every second for ``duration`` seconds; its latency and
   failures are reported, then how soon a new association succeeds after the peers go.

``--root`` runs the node from another checkout (e.g. the integration branch) for a
before/after comparison of the slow-peer figures; the node's settings are the same
(``allowed_calling_aes``, default limits and timeouts).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.dicom_factory import DX_FOR_PRESENTATION  # noqa: E402
from tests.integration.dicom_net import exchange  # noqa: E402
from tests.reliability.bombs import write_deflate_bomb, write_rle_bomb  # noqa: E402
from tests.reliability.memory import resident_kib  # noqa: E402
from tests.reliability.slow_peers import (  # noqa: E402
    Swarm,
    p_data_tricklers,
    request_tricklers,
)

SERVER = """
import sys
from pathlib import Path
from tests.integration.dicom_net import receiver_settings, running_node
folder = Path(sys.argv[1])
settings = receiver_settings(folder, f"sqlite:///{folder / 'radnode.db'}",
                             dicom={"allowed_calling_aes": ["ECHOSCU", "MODALITY"],
                                    "max_associations": int(sys.argv[2])},
                             logging={"format": "json", "level": "ERROR"})
with running_node(settings, assembly=False) as node:
    print(f"PORT {node.listener.port}", flush=True)
    sys.stdin.read()
"""


@contextmanager
def node(root: Path, folder: Path, slots: int = 16) -> Iterator[tuple[int, int]]:
    """Run a receiving node from checkout ``root`` with ``slots`` associations; yield
    (pid, port)."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(folder), str(slots)],
                               cwd=root, env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("PORT "), line
        yield process.pid, int(line.split()[1])
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def bombs(root: Path, work: Path) -> dict[str, Any]:
    deflate, rle = work / "deflate.dcm", work / "rle.dcm"
    write_deflate_bomb(deflate)
    write_rle_bomb(rle)
    folder = work / "bombs"
    folder.mkdir()
    figures: dict[str, Any] = {}
    with node(root, folder) as (pid, port):
        figures["rss_start_mib"] = resident_kib(pid)["VmRSS"] // 1024
        for name, path in (("deflate_1.5GB", deflate), ("rle_16384x16384", rle)):
            started = time.monotonic()
            result = exchange(port, [path], calling_ae="MODALITY",
                              sop_classes=[DX_FOR_PRESENTATION])
            memory = resident_kib(pid)
            figures[name] = {
                "file_mb": round(path.stat().st_size / 1e6, 2),
                "status": [f"0x{s:04X}" for s in result.statuses] or "no answer",
                "seconds": round(time.monotonic() - started, 2),
                "rss_mib": memory["VmRSS"] // 1024, "rss_peak_mib": memory["VmHWM"] // 1024,
            }
        figures["echo_after"] = exchange(port, [None], calling_ae="ECHOSCU").statuses
    return figures


def slow_peers(root: Path, work: Path, duration: float, interval: float,
               slots: int) -> dict[str, Any]:
    folder = work / "slow"
    folder.mkdir()
    latencies: list[float] = []
    failures = 0
    freed: float | None = None
    with node(root, folder, slots) as (_, port):
        peers = (request_tricklers(port, 10, first_host=2)
                 + p_data_tricklers(port, 10, first_host=20, calling_ae=b"MODALITY"))
        with Swarm(peers, interval):
            started = time.monotonic()
            while time.monotonic() - started < duration:
                begun = time.monotonic()
                result = exchange(port, [None], calling_ae="ECHOSCU")
                if result.statuses == [0x0000]:
                    latencies.append(time.monotonic() - begun)
                else:
                    failures += 1
                time.sleep(max(0.0, 1.0 - (time.monotonic() - begun)))
        gone = time.monotonic()
        while time.monotonic() - gone < 180:
            if exchange(port, [None], calling_ae="MODALITY").statuses == [0x0000]:
                freed = round(time.monotonic() - gone, 2)
                break
            time.sleep(0.05)
    ordered = sorted(latencies) or [float("nan")]
    return {
        "slow_peers": 20, "byte_interval_seconds": interval, "max_associations": slots,
        "echoes": len(latencies) + failures,
        "echo_failures": failures,
        "echoes_over_1s": sum(1 for seconds in latencies if seconds >= 1.0),
        "echo_seconds_median": round(statistics.median(ordered), 3),
        "echo_seconds_p95": round(ordered[int(len(ordered) * 0.95) - 1], 3),
        "echo_seconds_max": round(ordered[-1], 3),
        "request_trickler_held_seconds_max": round(max(
            (s for p in peers[:10] for s in p.held_seconds), default=0.0), 1),
        "p_data_trickler_held_seconds_max": round(max(
            (s for p in peers[10:] for s in p.held_seconds), default=0.0), 1),
        "spoofed_ae_served_after_peers_left_seconds": freed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=8.0)
    parser.add_argument("--root", type=Path, default=REPO, help="checkout the node runs from")
    parser.add_argument("--max-associations", type=int, default=16)
    parser.add_argument("--skip-bombs", action="store_true")
    args = parser.parse_args()
    figures: dict[str, Any] = {"root": str(args.root), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_bombs:
            figures["bombs"] = bombs(args.root, work)
        figures["slow_peers"] = slow_peers(args.root, work, args.duration, args.interval,
                                           args.max_associations)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
