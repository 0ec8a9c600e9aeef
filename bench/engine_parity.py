"""Draft parity on a device: a bundle's reports through the decode engine and through
``model.generate``.

Loads the bundle twice on the device, once with the decode engine and once without, encodes
the same pseudo-random images with the bundle's encoder, generates every report from
concurrent threads through the engine (so they share its batches and stop at their EOS at
different steps) and one image at a time through ``model.generate``, and compares the token
ids. Exit status 0 when every greedy report is identical.

Usage::

    python bench/engine_parity.py var/models/demo --device cuda --images 24 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from workers.inference.bundle import LoadedBundle, load_bundle  # noqa: E402


def pseudo_images(bundle: LoadedBundle, count: int, seed: int) -> np.ndarray:
    """(count, C, H, W) smooth random images in the bundle's normalised pixel range."""
    spec = bundle.manifest.preprocess
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(count, spec.channels, 8, 8)).astype(np.float32)
    repeat = -(-spec.size // 8)
    images = np.kron(coarse, np.ones((1, 1, repeat, repeat), dtype=np.float32))
    return np.ascontiguousarray(images[:, :, :spec.size, :spec.size])


def run(bundle_dir: Path, device: str, count: int, seed: int, slots: int) -> dict[str, Any]:
    """Generate with and without the engine and compare."""
    engine_bundle = load_bundle(bundle_dir, device=device, decode_engine=True,
                                engine_batch=slots)
    plain_bundle = load_bundle(bundle_dir, device=device, decode_engine=False)
    images = pseudo_images(engine_bundle, count, seed)
    embeds = engine_bundle.encode(images)
    plain_embeds = plain_bundle.encode(images)
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=slots) as pool:
        through_engine = list(pool.map(lambda e: engine_bundle.generate(e), embeds))
    engine_s = time.perf_counter() - started
    started = time.perf_counter()
    reference = [plain_bundle.generate(e) for e in plain_embeds]
    plain_s = time.perf_counter() - started
    identical = sum(a.token_ids == b.token_ids for a, b in zip(through_engine, reference,
                                                               strict=True))
    assert engine_bundle.engine is not None
    return {
        "bundle": engine_bundle.manifest.name,
        "device": device,
        "encoder_backend": engine_bundle.encoder_backend,
        "encoder_max_abs_difference": float(np.abs(embeds - plain_embeds).max()),
        "images": count,
        "identical": identical,
        "stopped_on_eos": sum(r.stopped_on_eos for r in through_engine),
        "new_tokens": sorted({r.new_tokens for r in through_engine}),
        "engine_seconds": round(engine_s, 3),
        "generate_seconds": round(plain_s, 3),
        "engine": engine_bundle.engine.describe(),
        "mean_batch": round(engine_bundle.engine.engine.stats.mean_batch(), 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run(args.bundle, args.device, args.images, args.seed, args.slots)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0 if result["identical"] == result["images"] else 1


if __name__ == "__main__":
    sys.exit(main())
