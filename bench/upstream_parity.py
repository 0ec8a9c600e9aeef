"""Stage-by-stage comparison of radnode's CXR-LLaVA path with the published inference code.

Not part of CI. The published code is never copied into this repository: the user gives a
local checkout of it (``--upstream``), and it runs in its own virtual environment with its
pinned library versions (``setup`` builds that environment from PyPI). For each tokenizer
variant (``legacy`` true, false, and absent from ``tokenizer_config.json``) the upstream half
(``bench/upstream_side_cxr_llava.py``) builds a tiny release with the upstream classes and
records its stages; this half imports that release with ``radnode model import-cxr-llava``'s
importer and compares, per image:

- preprocessed pixels (radnode's :func:`to_model_input` on the same 8-bit image), exact;
- prompt ids (before image slot, after it), exact;
- vision features: radnode's encoder on upstream's pixels (max abs difference reported);
- logits of one forward pass: radnode's LLM on the prompt spliced with upstream's image
  features (max abs difference reported);
- greedy ids from radnode's ``generate`` on upstream's features and on its own features.

The last three run twice: in float32 (the upstream code with its ``torch.bfloat16`` casts
read as float32; judged: greedy ids must be equal) and in bf16 as upstream publishes it
(reported only: two library versions' bf16 kernels round differently).

Usage::

    python bench/upstream_parity.py setup --venv /tmp/cxr-llava-upstream-venv
    python bench/upstream_parity.py run --venv /tmp/cxr-llava-upstream-venv \\
        --upstream /src/CXR_LLaVA --work /tmp/cxr-parity --json parity.json

Exit status 0 when pixels, prompt ids and float32 greedy ids are identical for every
variant.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

# CXR-LLaVA's requirements.txt pins (torch's +cu118 local build is not on PyPI: the same
# release is taken from there).
UPSTREAM_PINS = [
    "torch==2.1.2",
    "transformers==4.36.2",
    "tokenizers==0.15.0",
    "sentencepiece==0.1.99",
    "numpy==1.26.3",
    "pillow==10.2.0",
    "safetensors==0.4.1",
    "protobuf==4.25.2",
    "huggingface-hub==0.20.2",
]
VARIANTS = ("true", "false", "unset")
IMAGE_TOKEN_INDEX = -200


def setup(venv: Path) -> None:
    """Create the upstream environment with its pinned versions."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *UPSTREAM_PINS], check=True)


def compare_variant(upstream_out: Path, bundle_dir: Path) -> dict[str, Any]:
    """Compare radnode's stages with the recorded upstream ones for one tiny release."""
    from workers.inference.bundle import load_bundle
    from workers.inference.importers.cxr_llava import import_cxr_llava
    from workers.inference.preprocess import to_model_input

    record = json.loads((upstream_out / "upstream.json").read_text())
    arrays = dict(np.load(upstream_out / "upstream.npz"))
    import_cxr_llava(upstream_out / "release", bundle_dir, export_onnx=False, overwrite=True)
    result: dict[str, Any] = {
        "legacy_upstream": record["legacy"],
        "upstream_versions": record["versions"],
        "pixels_equal": [],
    }
    for precision, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        bundle = load_bundle(bundle_dir, encoder_backend="torch", llm_dtype=dtype)
        if precision == "fp32":
            manifest = bundle.manifest
            prompt = bundle.prompt_tokens()
            ours_ids = [*prompt.before, IMAGE_TOKEN_INDEX, *prompt.after]
            theirs_ids = [int(i) for i in arrays["input_ids"]]
            result["bundle_tokenizer"] = manifest.tokenizer.model_dump()
            result["prompt_ids_equal"] = ours_ids == theirs_ids
            result["prompt_ids_upstream_head"] = theirs_ids[:6]
            result["prompt_ids_radnode_head"] = ours_ids[:6]
            for number in range(int(record["images"])):
                pixels = to_model_input(arrays[f"image_{number}"], manifest.preprocess)
                theirs = arrays[f"pixels_{number}"]
                result["pixels_equal"].append(
                    bool(pixels.shape == theirs.shape and np.array_equal(pixels, theirs))
                )
        result[precision] = _compare_precision(bundle, record, arrays, precision)
    return result


def _compare_precision(
    bundle: Any, record: dict[str, Any], arrays: dict[str, np.ndarray], precision: str
) -> dict[str, Any]:
    import torch

    from workers.inference.llm import build_inputs_embeds
    from workers.inference.manifest import GenerationSpec
    from workers.inference.preprocess import to_model_input

    manifest = bundle.manifest
    prompt = bundle.prompt_tokens()
    encoder = copy.deepcopy(bundle.encoder)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    encoder = encoder.to(dtype)
    greedy = GenerationSpec(
        temperature=0.0,
        top_p=1.0,
        max_new_tokens=int(record["max_new_tokens"]),
        repetition_penalty=manifest.generation.repetition_penalty,
        top_k=manifest.generation.top_k,
    )
    features_diff, logits_diff, features_scale, logits_scale = [], [], [], []
    on_theirs, end_to_end = [], []
    for number in range(int(record["images"])):
        upstream_pixels = torch.from_numpy(arrays[f"pixels_{number}"])[None]
        theirs_features = torch.from_numpy(arrays[f"features_{precision}_{number}"])
        theirs_logits = torch.from_numpy(arrays[f"logits_{precision}_{number}"])
        with torch.no_grad():
            ours_features = encoder(upstream_pixels.to(dtype))[0].float()
            embeds = build_inputs_embeds(
                bundle.model.get_input_embeddings(), prompt, theirs_features
            )
            logits = bundle.model(inputs_embeds=embeds).logits[0].float()
        features_diff.append(float((ours_features - theirs_features).abs().max()))
        features_scale.append(float(theirs_features.abs().max()))
        logits_diff.append(float((logits - theirs_logits).abs().max()))
        logits_scale.append(float(theirs_logits.abs().max()))
        expected = record[f"greedy_{precision}"][number]
        got = bundle.generate(theirs_features.numpy(), generation=greedy).token_ids
        on_theirs.append(got == expected)
        pixels = to_model_input(arrays[f"image_{number}"], manifest.preprocess)
        with torch.no_grad():
            own = encoder(torch.from_numpy(pixels)[None].to(dtype))[0].float().numpy()
        end_to_end.append(bundle.generate(own, generation=greedy).token_ids == expected)
    return {
        "features_max_abs": max(features_diff),
        "features_scale": max(features_scale),
        "logits_max_abs": max(logits_diff),
        "logits_scale": max(logits_scale),
        "greedy_equal_on_upstream_features": on_theirs,
        "greedy_equal_end_to_end": end_to_end,
    }


def passed(result: dict[str, Any]) -> bool:
    """Whether the exact stages agree for every image of one variant: pixels, prompt ids,
    and float32 greedy ids (bf16 figures are reported, not judged)."""
    fp32 = result["fp32"]
    return (
        bool(result["prompt_ids_equal"])
        and all(result["pixels_equal"])
        and all(fp32["greedy_equal_on_upstream_features"])
        and all(fp32["greedy_equal_end_to_end"])
    )


def run(args: argparse.Namespace) -> int:
    """Build the tiny releases upstream, compare every stage, print and save the result."""
    python = args.venv / "bin" / "python"
    helper = REPO_ROOT / "bench" / "upstream_side_cxr_llava.py"
    results: dict[str, Any] = {}
    for variant in args.variants:
        out = args.work / f"legacy-{variant}"
        command = [str(python), str(helper), "--upstream", str(args.upstream), "--out", str(out),
                   "--legacy", variant]
        subprocess.run(command, check=True, capture_output=not args.verbose)
        results[variant] = compare_variant(out, args.work / f"bundle-{variant}")
    ok = all(passed(r) for r in results.values())
    for variant, result in results.items():
        count = len(result["pixels_equal"])
        print(
            f"legacy={variant}: prompt ids equal {result['prompt_ids_equal']} (upstream head "
            f"{result['prompt_ids_upstream_head']}, radnode {result['prompt_ids_radnode_head']}"
            f"); pixels equal {sum(result['pixels_equal'])}/{count}"
        )
        for precision in ("fp32", "bf16"):
            stage = result[precision]
            print(
                f"  {precision}: features max|d| {stage['features_max_abs']:.3g} (scale "
                f"{stage['features_scale']:.3g}); logits max|d| {stage['logits_max_abs']:.3g} "
                f"(scale {stage['logits_scale']:.3g}); greedy ids equal "
                f"{sum(stage['greedy_equal_on_upstream_features'])}/{count} on upstream "
                f"features, {sum(stage['greedy_equal_end_to_end'])}/{count} end to end"
            )
    print("PASS" if ok else "FAIL")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("setup", help="create the upstream virtual environment")
    make.add_argument("--venv", type=Path, required=True)
    compare = commands.add_parser("run", help="build tiny releases upstream and compare")
    compare.add_argument("--venv", type=Path, required=True)
    compare.add_argument("--upstream", type=Path, required=True,
                         help="local checkout of the CXR-LLaVA code (holds CXR_LLAVA_HF/)")
    compare.add_argument("--work", type=Path, required=True)
    compare.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    compare.add_argument("--json", type=Path)
    compare.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "setup":
        setup(args.venv)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
