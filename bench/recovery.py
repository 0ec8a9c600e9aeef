"""Recovery benchmark: time from each job fault to the draft, with real processes.

Runs the scenarios of ``tests/reliability/test_job_recovery.py`` (real ``radnode worker``
processes, a private redis-server, PostgreSQL at 127.0.0.1:5432, an embedded ``radnode
serve`` on SQLite) ``--repeat`` times and prints, per scenario, the seconds from the fault
to the draft that each run recorded::

    PYTHONPATH=$PWD .venv/bin/python bench/recovery.py              # one run
    PYTHONPATH=$PWD .venv/bin/python bench/recovery.py --repeat 3 --json out.json

The scenarios use short heartbeats (0.5 s) and leases and re-queue ages far above the
bounds, so each figure is the mechanism's own time plus process start, model load and
one CPU draft of the demo model on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "reliability"
SCENARIOS = {
    "recovery_worker_restart": ("worker kill -9, restarted under its name",
                                "ready_to_drafted_seconds"),
    "recovery_frozen_worker": ("worker SIGSTOP, another worker takes over",
                               "sigstop_to_drafted_seconds"),
    "recovery_redis_outage": ("Redis down ~10 s while studies arrive, back empty",
                              "return_to_all_drafted_seconds"),
    "recovery_embedded_restart": ("embedded node kill -9, restarted",
                                  "listening_to_taken_up_seconds"),
}


def run_once() -> dict[str, dict[str, float]]:
    """Run the scenarios once; return each one's recorded figures."""
    for name in SCENARIOS:
        (ARTIFACTS / f"{name}.json").unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "tests/reliability/test_job_recovery.py",
               "-q", "-p", "no:cacheprovider", "-k", "not usable_model"]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            check=False)
    if result.returncode != 0:
        raise SystemExit(f"the recovery scenarios failed (exit {result.returncode})")
    return {name: json.loads((ARTIFACTS / f"{name}.json").read_text())
            for name in SCENARIOS}


def main() -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args()
    runs = [run_once() for _ in range(args.repeat)]
    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, {platform.python_version()}")
    for name, (label, key) in SCENARIOS.items():
        values = [run[name][key] for run in runs]
        print(f"{label:55s} {key:32s} median {statistics.median(values):6.1f} s "
              f"(min {min(values):.1f}, max {max(values):.1f}, n={len(values)})")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
