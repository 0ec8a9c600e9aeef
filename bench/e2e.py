"""End-to-end drafting benchmark: last C-STORE → DRAFTED, and studies per hour.

Runs the node in this process (DICOM listener, assembly, scheduler, reconciler)
with a Redis broker and ONE ``radnode worker`` subprocess, sends synthetic
single-image chest studies with a pynetdicom SCU, and reads when each draft
report was committed.

* latency: studies sent one at a time (each after the previous is drafted), so
  no study waits in the queue; median and p95 of (report committed − C-STORE
  response received). Single CR/DX images complete at once (early stability),
  so the quiet period is not part of the figure.
* throughput: a burst of studies sent together; studies per hour = burst size ÷
  (last report committed − first C-STORE sent).

Usage::

    .venv/bin/python bench/e2e.py [--studies 50] [--burst 50] [--concurrency 1]
        [--decode-engine auto|on|off] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
from sqlalchemy import create_engine, select, text

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from node.config import load_settings  # noqa: E402
from node.db.models import Report, Study  # noqa: E402
from node.demo import send_files  # noqa: E402
from node.runtime import NodeServices  # noqa: E402
from node.states import StudyState  # noqa: E402
from workers.inference.synth.studies import DemoStudy, write_demo_studies  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/12"
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _write_studies(folder: Path, count: int, seed: int) -> list[DemoStudy]:
    """Single-image PA/AP phantom studies (no lateral), new UIDs for every seed."""
    return write_demo_studies(folder, count=count, seed=seed, with_lateral=False)


def _drafted_at(services: NodeServices, study_uids: list[str]) -> dict[str, dt.datetime]:
    with services.database.sessions() as session:
        rows = session.execute(
            select(Study.study_instance_uid, Report.created_at)
            .join(Report, Report.study_id == Study.id)
            .where(Study.study_instance_uid.in_(study_uids), Study.state == StudyState.DRAFTED)
        )
        return {uid: created for uid, created in rows}


def _wait_drafted(
    services: NodeServices, uids: list[str], timeout: float
) -> dict[str, dt.datetime]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = _drafted_at(services, uids)
        if len(done) == len(uids):
            return done
        time.sleep(0.05)
    raise TimeoutError(f"only {len(_drafted_at(services, uids))}/{len(uids)} drafted")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=50, help="latency samples")
    parser.add_argument("--burst", type=int, default=50, help="throughput burst size")
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "var/models/demo")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--concurrency", type=int, default=1, help="the worker's task threads")
    parser.add_argument("--decode-engine", choices=("auto", "on", "off"), default="auto",
                        help="[worker] decode_engine of the worker (auto: off on a CPU)")
    args = parser.parse_args()

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    redis.Redis.from_url(REDIS_URL).flushdb()
    work = Path(tempfile.mkdtemp(prefix="radnode-e2e-"))
    db_url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    settings = load_settings(
        dicom={"port": 0, "bind_address": "127.0.0.1"},
        database={"url": db_url},
        broker={"url": REDIS_URL},
        storage={"root": str(work / "storage"), "min_free_mb": 1},
        assembly={"quiet_seconds": 10, "early_stable_single_image": True, "poll_seconds": 0.05},
        model={"bundle": str(args.bundle)},
        logging={"level": "WARNING", "format": "text"},
    )
    services = NodeServices.build(settings)
    services.start()
    env = {**os.environ, "RADNODE_DATABASE__URL": db_url, "RADNODE_BROKER__URL": REDIS_URL,
           "RADNODE_STORAGE__ROOT": str(work / "storage"),
           "RADNODE_MODEL__BUNDLE": str(args.bundle), "RADNODE_WORKER__DEVICE": "cpu",
           "RADNODE_LOGGING__LEVEL": "WARNING", "RADNODE_WORKER__DECODE_ENGINE": args.decode_engine}
    worker = subprocess.Popen(
        [sys.executable, "-m", "node.cli.main", "worker", "--concurrency", str(args.concurrency)],
        env=env, stdout=subprocess.DEVNULL, stderr=(work / "worker.log").open("wb"),
    )
    port, ae = services.listener.port, settings.dicom.ae_title
    try:
        print("warming up (model load)...", file=sys.stderr)
        warm = _write_studies(work / "warm", 1, seed=1)
        send_files(port, ae, [warm[0].frontal])
        _wait_drafted(services, [warm[0].study_uid], 300)

        latency_studies = _write_studies(work / "latency", args.studies, seed=2)
        latencies = []
        for index, study in enumerate(latency_studies, 1):
            uid = study.study_uid
            send_files(port, ae, [study.frontal])
            acked = dt.datetime.now(dt.UTC)
            drafted = _wait_drafted(services, [uid], 120)[uid]
            latencies.append((drafted - acked).total_seconds())
            print(f"\rlatency {index}/{len(latency_studies)}: {latencies[-1]:.2f} s",
                  end="", file=sys.stderr)
        print(file=sys.stderr)

        burst = _write_studies(work / "burst", args.burst, seed=3)
        uids = [study.study_uid for study in burst]
        started = dt.datetime.now(dt.UTC)
        send_files(port, ae, [study.frontal for study in burst])
        sent = dt.datetime.now(dt.UTC)
        drafted = _wait_drafted(services, uids, 3600)
        finished = max(drafted.values())
        span = (finished - started).total_seconds()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        services.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        shutil.rmtree(work, ignore_errors=True)

    ordered = sorted(latencies)
    result = {
        "latency_samples": len(latencies),
        "latency_median_s": statistics.median(latencies),
        "latency_p95_s": ordered[max(0, int(round(0.95 * len(ordered))) - 1)],
        "burst_studies": args.burst,
        "burst_send_s": (sent - started).total_seconds(),
        "burst_span_s": span,
        "studies_per_hour": 3600 * args.burst / span,
        "worker_concurrency": args.concurrency,
        "decode_engine": args.decode_engine,
        "device": "cpu",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
