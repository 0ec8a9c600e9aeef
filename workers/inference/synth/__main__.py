"""Command line: train the synthetic demo bundle and optionally score it.

``python -m workers.inference.synth OUT_DIR [--seed N] [--evaluate STUDIES] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Train, write the bundle, print a summary (and the held-out agreement when asked)."""
    parser = argparse.ArgumentParser(prog="python -m workers.inference.synth")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluate", type=int, default=0, metavar="STUDIES")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")

    from workers.inference.synth.train import TRAINING_RECORD, synthesize_demo_bundle

    def progress(step: int, total: int, loss: float) -> None:
        if not args.quiet and (step % 100 == 0 or step == total):
            print(f"step {step}/{total} loss {loss:.4f}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    path = synthesize_demo_bundle(args.out_dir, seed=args.seed, progress=progress)
    summary: dict[str, object] = {
        "bundle": str(path),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "training": json.loads((path / "llm" / TRAINING_RECORD).read_text(encoding="utf-8")),
    }
    if args.evaluate > 0:
        from workers.inference.bundle import load_bundle
        from workers.inference.synth.evaluate import evaluate_bundle

        summary["held_out"] = evaluate_bundle(load_bundle(path), studies=args.evaluate).to_dict()
    text = json.dumps(summary, indent=2)
    if args.json is not None:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
