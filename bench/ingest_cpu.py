"""CPU the listener spends per received instance, measured in-process (a profiling aid).

The node's DICOM listener and ingest run in this process on SQLite (or a PostgreSQL URL);
DCMTK ``storescu`` sends from outside it. Process CPU time per instance is much less
sensitive to other work on a shared machine than wall time, so it shows what a change to
the receive path costs or saves where ``bench/ingest.py``'s wall-clock ratios drown in
noise. Compare two versions by running this twice with ``PYTHONPATH`` set to each tree::

    PYTHONPATH=. .venv/bin/python bench/ingest_cpu.py --kind small --count 60
    PYTHONPATH=/other/tree .venv/bin/python bench/ingest_cpu.py --kind small --count 60
    PYTHONPATH=. .venv/bin/python bench/ingest_cpu.py --kind large --count 12 --senders 4
    PYTHONPATH=. .venv/bin/python bench/ingest_cpu.py --kind small --count 40 --profile
    PYTHONPATH=. .venv/bin/python bench/ingest_cpu.py --kind small --count 40 --profile --cpu-time

``--profile`` adds a cProfile of every association and reading thread (the listener's
work happens there, not in the main thread).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import generate_images  # noqa: E402
from ingest_receivers import PDU_BYTES, SENDER_AE  # noqa: E402


def _profile_threads(profiles: list[cProfile.Profile], cpu_time: bool) -> None:
    """Run every association, reading thread and admission under its own profiler
    (timing the thread's CPU time with ``cpu_time``, wall time otherwise)."""
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider
    from pynetdicom.transport import ThreadedAssociationServer

    def profiled(original: Any) -> Any:
        def run(*args: Any) -> Any:
            profile = cProfile.Profile(time.thread_time) if cpu_time else cProfile.Profile()
            profiles.append(profile)
            profile.enable()
            try:
                return original(*args)
            finally:
                profile.disable()
        return run

    Association.run = profiled(Association.run)  # type: ignore[method-assign]
    DULServiceProvider.run = profiled(DULServiceProvider.run)  # type: ignore[method-assign]
    ThreadedAssociationServer.process_request_thread = profiled(  # type: ignore[method-assign]
        ThreadedAssociationServer.process_request_thread)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("small", "large"), default="small")
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--senders", type=int, default=1, help="concurrent senders")
    parser.add_argument("--database", default="", help="a database URL (default: SQLite)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime", help="cProfile sort key")
    parser.add_argument("--cpu-time", action="store_true",
                        help="profile each thread's CPU time (waits then cost nothing)")
    args = parser.parse_args()

    from node.config import load_settings
    from node.db.engine import Database
    from node.dicom.ingest import InstanceIngestor
    from node.dicom.scp import DicomListener
    from node.storage import InstanceStore

    profiles: list[cProfile.Profile] = []
    if args.profile:
        _profile_threads(profiles, args.cpu_time)
    with tempfile.TemporaryDirectory(prefix="radnode-cpu-") as scratch:
        root = Path(scratch)
        large = args.kind == "large"
        data = generate_images(root / "data", args.kind, args.count,
                               2500 if large else 64, 2048 if large else 64, seed=1)
        settings = load_settings(
            dicom={"port": 0, "bind_address": "127.0.0.1", "max_associations": 32},
            database={"url": args.database or f"sqlite:///{root / 'radnode.db'}"},
            storage={"root": str(root / "storage"), "min_free_mb": 1},
            logging={"level": "WARNING"},
        )
        database = Database.from_settings(settings, migrate=True)
        store = InstanceStore(root / "storage", min_free_mb=1, max_used_percent=100)
        listener = DicomListener(settings.dicom, InstanceIngestor(store, database.sessions))
        listener.start()
        env = dict(os.environ, TCP_NODELAY="1")

        def send(files: list[Path]) -> None:
            subprocess.run(
                ["storescu", "-aet", SENDER_AE, "-aec", "RADNODE", "-pdu", str(PDU_BYTES),
                 "--max-send-pdu", str(PDU_BYTES), "127.0.0.1", str(listener.port),
                 *map(str, files)],
                check=True, env=env, stdout=subprocess.DEVNULL)

        def one_sender(files: list[Path]) -> None:
            for path in files if not large else [None]:
                send(files if path is None else [path])

        parts = [list(data.files[i::args.senders]) for i in range(args.senders)]
        cpu, wall = time.process_time(), time.perf_counter()
        with ThreadPoolExecutor(args.senders) as pool:
            list(pool.map(one_sender, parts))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        listener.stop()
        database.engine.dispose()
    per = 1000 / args.count
    print(f"{args.kind} × {args.count}, {args.senders} sender(s): wall {wall * per:.1f} ms and "
          f"listener CPU {cpu * per:.1f} ms per instance; {cpu / wall:.2f} cores busy; "
          f"load average {os.getloadavg()[0]:.1f}")
    if profiles:
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.sort_stats(args.sort).print_stats(40)
    return 0


if __name__ == "__main__":
    sys.exit(main())
