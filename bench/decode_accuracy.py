"""Accuracy of a decode-engine configuration (fp8 weights / KV cache) against a reference one.

On the same requests it measures:

* **greedy token agreement**: both engines decode every request greedily; the share of
  requests whose tokens are identical, the mean share of tokens before the first difference,
  and the share of positions equal;
* **logit error**: both configurations score the reference's own sequences (prompt + its
  greedy tokens, teacher forced) and the logits are compared position by position: max and
  mean absolute difference, the same over the reference's logit range, and top-1 agreement;
* **labeler agreement** (when the model has a tokenizer that writes reports): the texts of
  both are labelled with the CheXpert-style labeler (``workers/evaluation/labeler.py``) and
  the labels of the 14 observations compared, per observation and per whole report.

``bench/gpu_checks.py`` runs it on a GPU with the Vicuna-7B shape and on the demo bundle;
the test suite runs it on the CPU with tiny models. On its own, for a bundle::

    python bench/decode_accuracy.py var/models/demo --requests 64 --new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from workers.inference.engine import DecodeEngine, DecodeRequest  # noqa: E402
from workers.inference.engine.forward import (  # noqa: E402
    KVCacheKind,
    LayerKernels,
    RotaryTables,
    StaticKVCache,
    prefill_chunk,
)
from workers.inference.engine.weights import DecoderWeights  # noqa: E402


def greedy_agreement(reference: Sequence[list[int]], candidate: Sequence[list[int]]
                     ) -> dict[str, Any]:
    """How far two sets of greedy sequences (same requests, same order) agree."""
    if len(reference) != len(candidate):
        raise ValueError("both sides need the same number of sequences")
    prefix, positions_equal, positions = [], 0, 0
    identical = 0
    for ref, cand in zip(reference, candidate, strict=True):
        same = 0
        for a, b in zip(ref, cand, strict=False):
            if a != b:
                break
            same += 1
        prefix.append(same / max(1, len(ref)))
        positions_equal += sum(a == b for a, b in zip(ref, cand, strict=False))
        positions += max(len(ref), len(cand))
        identical += int(ref == cand)
    return {
        "requests": len(reference),
        "identical_sequences": identical,
        "identical_share": round(identical / max(1, len(reference)), 4),
        "mean_share_before_first_difference": round(statistics.fmean(prefix), 4)
        if prefix else 0.0,
        "position_agreement": round(positions_equal / max(1, positions), 4),
    }


def sequence_logits(weights: DecoderWeights, prompt: torch.Tensor, tokens: Sequence[int], *,
                    kv_cache: KVCacheKind = "auto") -> torch.Tensor:
    """Teacher-forced logits: row ``i`` predicts ``tokens[i]`` from the prompt and
    ``tokens[:i]`` (one prefill over prompt + tokens through a one-slot cache)."""
    ids = torch.tensor(list(tokens)[:-1], dtype=torch.long, device=weights.device)
    embeds = torch.cat([prompt.to(device=weights.device, dtype=weights.dtype),
                        torch.nn.functional.embedding(ids, weights.embed)])
    length = int(embeds.shape[0])
    cache = StaticKVCache(weights.shape, 1, length, dtype=weights.dtype, device=weights.device,
                          kind=kv_cache)
    rotary = RotaryTables(weights, cache.capacity)
    with torch.inference_mode():
        logits = prefill_chunk(weights, LayerKernels.plain(), cache, rotary, 0, embeds, start=0,
                               all_logits=True)
    cache.release()
    first = int(prompt.shape[0]) - 1
    return logits[first:first + len(tokens)]


def logit_error(reference: DecoderWeights, candidate: DecoderWeights,
                prompts: Sequence[torch.Tensor], sequences: Sequence[list[int]], *,
                reference_kv: KVCacheKind = "auto", candidate_kv: KVCacheKind = "auto"
                ) -> dict[str, Any]:
    """Logits of ``candidate`` against ``reference`` on the reference's own sequences."""
    max_abs, mean_abs, scale, top1, count = 0.0, [], 0.0, 0, 0
    for prompt, tokens in zip(prompts, sequences, strict=True):
        if not tokens:
            continue
        ref = sequence_logits(reference, prompt, tokens, kv_cache=reference_kv)
        cand = sequence_logits(candidate, prompt, tokens, kv_cache=candidate_kv)
        diff = (cand - ref).abs()
        max_abs = max(max_abs, float(diff.max()))
        mean_abs.append(float(diff.mean()))
        scale = max(scale, float(ref.abs().max()))
        top1 += int((cand.argmax(-1) == ref.argmax(-1)).sum())
        count += int(ref.shape[0])
    return {
        "positions": count,
        "max_abs": round(max_abs, 5),
        "mean_abs": round(statistics.fmean(mean_abs), 5) if mean_abs else 0.0,
        "reference_max_abs_logit": round(scale, 3),
        "max_abs_relative_to_range": round(max_abs / scale, 5) if scale else 0.0,
        "teacher_forced_top1_agreement": round(top1 / max(1, count), 4),
    }


def labeler_agreement(reference_texts: Sequence[str], candidate_texts: Sequence[str]
                      ) -> dict[str, Any]:
    """CheXpert-style labels of two sets of report texts, compared."""
    from node.observations import Observation
    from workers.evaluation.labeler import label_report

    pairs, equal_pairs, equal_reports = 0, 0, 0
    for ref_text, cand_text in zip(reference_texts, candidate_texts, strict=True):
        ref = label_report(ref_text)
        cand = label_report(cand_text)
        same = [ref[o] == cand[o] for o in Observation]
        pairs += len(same)
        equal_pairs += sum(same)
        equal_reports += int(all(same))
    reports = len(reference_texts)
    return {
        "reports": reports,
        "identical_texts": sum(a == b for a, b in zip(reference_texts, candidate_texts,
                                                      strict=True)),
        "observation_label_agreement": round(equal_pairs / max(1, pairs), 4),
        "reports_with_all_labels_equal": round(equal_reports / max(1, reports), 4),
    }


def generate_greedy(engine: DecodeEngine, prompts: Sequence[torch.Tensor], new_tokens: int,
                    eos: int | None) -> list[list[int]]:
    """Greedy token ids of every prompt through ``engine``."""
    stops = () if eos is None else (eos,)
    outputs = engine.generate([DecodeRequest(p, new_tokens, stop_token_ids=stops)
                               for p in prompts])
    return [o.token_ids for o in outputs]


def compare_configurations(model: Any, prompts: Sequence[torch.Tensor], new_tokens: int, *,
                           eos: int | None = None, tokenizer: Any = None,
                           candidate: dict[str, Any], reference: dict[str, Any] | None = None,
                           max_batch: int = 8, attention: str = "sdpa",
                           logit_requests: int | None = None) -> dict[str, Any]:
    """Greedy agreement, logit error and (with a tokenizer) labeler agreement of the engine
    configured with ``candidate`` (e.g. ``{"fp8": True, "kv_cache": "fp8"}``) against
    ``reference`` (default: the model as it is) on the same prompts.

    ``logit_requests`` limits the teacher-forced scoring to the first requests (it runs one
    prefill per request and side)."""
    reference = reference or {}
    longest = max(int(p.shape[0]) for p in prompts) + new_tokens + 1
    common = dict(max_batch=max_batch, max_seq_len=longest, max_new_tokens=new_tokens,
                  attention=attention)
    ref_engine = DecodeEngine(model, **common, **reference)
    try:
        ref_tokens = generate_greedy(ref_engine, prompts, new_tokens, eos)
    finally:
        ref_engine.close()
    cand_engine = DecodeEngine(model, **common, **candidate)
    try:
        cand_tokens = generate_greedy(cand_engine, prompts, new_tokens, eos)
    finally:
        cand_engine.close()
    scored = len(prompts) if logit_requests is None else min(logit_requests, len(prompts))
    result: dict[str, Any] = {
        "reference": reference or "model dtype",
        "candidate": candidate,
        "new_tokens": new_tokens,
        "greedy": greedy_agreement(ref_tokens, cand_tokens),
        "logits": logit_error(ref_engine.weights, cand_engine.weights, prompts[:scored],
                              ref_tokens[:scored],
                              reference_kv=reference.get("kv_cache", "auto"),
                              candidate_kv=candidate.get("kv_cache", "auto")),
        "step_bytes_ratio_at_mean_context": round(
            cand_engine.step_bytes(max_batch, longest // 2)
            / ref_engine.step_bytes(max_batch, longest // 2), 4),
    }
    if tokenizer is not None:
        def texts(rows: list[list[int]]) -> list[str]:
            return [tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows]
        result["labels"] = labeler_agreement(texts(ref_tokens), texts(cand_tokens))
    return result


def demo_bundle_prompts(bundle_dir: Path, count: int, *, device: str = "cpu",
                        seed: int = 900_000) -> tuple[Any, Any, list[torch.Tensor], int]:
    """The demo bundle's LLM and tokenizer, and the spliced prompts of ``count`` held-out
    phantom studies (the kind of image the demo model writes reports for)."""
    import numpy as np

    from workers.inference.bundle import load_bundle
    from workers.inference.preprocess import to_model_input
    from workers.inference.synth.data import stored_to_display
    from workers.inference.synth.phantom import random_phantom

    bundle = load_bundle(bundle_dir, device=device, decode_engine=False)
    spec = bundle.manifest.preprocess
    phantoms = [random_phantom(s, size=spec.size) for s in range(seed, seed + count)]
    pixels = np.stack([to_model_input(stored_to_display(p.pixels, p.bits), spec)
                       for p in phantoms])
    prompts = []
    for row in bundle.encode(pixels):
        prompts.append(bundle.inputs_embeds(row)[0].to(device))
    eos = int(bundle.tokenizer.eos_token_id)
    return bundle.model, bundle.tokenizer, prompts, eos


def main(argv: list[str] | None = None) -> int:
    """fp8 weights and KV cache against the bundle's own dtype, on held-out phantoms."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--logit-requests", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    model, tokenizer, prompts, eos = demo_bundle_prompts(args.bundle, args.requests,
                                                         device=args.device)
    result = {"bundle": str(args.bundle), "device": args.device, "torch": torch.__version__}
    result.update(compare_configurations(
        model, prompts, args.new_tokens, eos=eos, tokenizer=tokenizer,
        candidate={"fp8": True, "kv_cache": "fp8"}, attention="varlen", max_batch=16,
        logit_requests=args.logit_requests))
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    return 0



__all__ = [
    "compare_configurations",
    "demo_bundle_prompts",
    "generate_greedy",
    "greedy_agreement",
    "labeler_agreement",
    "logit_error",
    "sequence_logits",
]


if __name__ == "__main__":
    sys.exit(main())
