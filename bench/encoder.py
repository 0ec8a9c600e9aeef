"""CPU drafting benchmark: image encoder (ONNX Runtime vs torch) and demo drafts per minute.

1. The LLaVA-Rad image encoder at its real geometry (DINOv2-style ViT-B/14 at 518, 11 of
   12 blocks, MLP projector to 4096) with random weights: milliseconds per image with
   torch and with ONNX Runtime (CPU provider), interleaved repetitions, same input.
2. The demo bundle (``var/models/demo``): whole drafts (decode, preprocess, encode,
   generate) per minute over synthetic studies.

Usage::

    .venv/bin/python bench/encoder.py [--reps 3] [--drafts 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from workers.inference.bundle import load_bundle  # noqa: E402
from workers.inference.drafting import draft_study  # noqa: E402
from workers.inference.encoder import OnnxImageEncoder, build_image_encoder  # noqa: E402
from workers.inference.manifest import ProjectorSpec, VisionSpec  # noqa: E402
from workers.inference.onnx_export import export_encoder_onnx  # noqa: E402
from workers.inference.synth.studies import write_demo_studies  # noqa: E402

LLAVA_RAD_VISION = VisionSpec(kind="dinov2_vit", image_size=518, patch_size=14, width=768,
                              layers=12, heads=12, in_channels=3, select_layer=-2,
                              drop_cls=True, final_norm=False, layerscale=True)
LLAVA_RAD_PROJECTOR = ProjectorSpec(kind="mlp2x_gelu", in_dim=768, out_dim=4096)


def encoder_timings(reps: int) -> dict[str, float]:
    """Median ms per image of the LLaVA-Rad encoder, torch and ONNX Runtime."""
    torch.manual_seed(0)
    encoder = build_image_encoder(LLAVA_RAD_VISION, LLAVA_RAD_PROJECTOR).eval()
    pixels = np.random.default_rng(0).standard_normal((1, 3, 518, 518)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        print("exporting the encoder to ONNX...", file=sys.stderr)
        path = export_encoder_onnx(encoder, Path(folder) / "encoder.onnx")
        onnx_encoder = OnnxImageEncoder(path)
        onnx_encoder.encode(pixels)  # warm-up
        with torch.inference_mode():
            encoder(torch.from_numpy(pixels))
            torch_ms, onnx_ms = [], []
            for rep in range(reps):
                start = time.perf_counter()
                reference = encoder(torch.from_numpy(pixels)).numpy()
                torch_ms.append(1000 * (time.perf_counter() - start))
                start = time.perf_counter()
                candidate = onnx_encoder.encode(pixels)
                onnx_ms.append(1000 * (time.perf_counter() - start))
                print(f"rep {rep + 1}/{reps}: torch {torch_ms[-1]:.0f} ms, "
                      f"onnx {onnx_ms[-1]:.0f} ms", file=sys.stderr)
    return {
        "torch_ms": statistics.median(torch_ms),
        "onnx_ms": statistics.median(onnx_ms),
        "onnx_over_torch": statistics.median(o / t for o, t in zip(onnx_ms, torch_ms,
                                                                    strict=True)),
        "max_abs_error": float(np.max(np.abs(reference - candidate))),
        "torch_threads": torch.get_num_threads(),
    }


def demo_drafts_per_minute(bundle_dir: Path, count: int) -> dict[str, float]:
    """Draft ``count`` synthetic studies one after another with the demo bundle."""
    bundle = load_bundle(bundle_dir)
    with tempfile.TemporaryDirectory() as folder:
        studies = write_demo_studies(folder, count=count + 1, seed=99, with_lateral=False)
        draft_study([studies[0].frontal], bundle)  # warm-up
        seconds = []
        for index, study in enumerate(studies[1:], 1):
            start = time.perf_counter()
            draft_study([study.frontal], bundle)
            seconds.append(time.perf_counter() - start)
            print(f"\rdraft {index}/{count}: {seconds[-1]:.2f} s", end="", file=sys.stderr)
        print(file=sys.stderr)
    return {"drafts": count, "median_s": statistics.median(seconds),
            "drafts_per_minute": 60 * count / sum(seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--drafts", type=int, default=20)
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "var/models/demo")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {"llava_rad_encoder": encoder_timings(args.reps),
              "demo_model": demo_drafts_per_minute(args.bundle, args.drafts)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
