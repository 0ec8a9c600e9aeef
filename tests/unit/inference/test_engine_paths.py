"""The decode engine's newer paths on the CPU: attention over each sequence's own length,
chunked prefill (the forward pass and the engine), and fp8 weights and KV cache.

The GPU kernels behind these paths (the Triton attention kernel, fp8 tensor-core products)
are checked against the same reference paths by ``bench/gpu_checks.py`` on a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.inference.test_engine import prompts, reference, tiny_llama
from workers.inference.engine import DecodeEngine, DecodeRequest
from workers.inference.engine.forward import (
    LayerKernels,
    RotaryTables,
    StaticKVCache,
    _attend,
    attend_varlen_reference,
    prefill,
    prefill_chunk,
)
from workers.inference.engine.weights import extract_weights

REPO_ROOT = Path(__file__).resolve().parents[3]
LENGTHS = [40, 73, 12, 55, 90, 31, 64]


@pytest.fixture(scope="module")
def model() -> Any:
    """Grouped-query attention (2 key/value heads for 4 query heads)."""
    return tiny_llama(kv_heads=2)


@pytest.fixture(scope="module")
def expected(model: Any) -> list[list[int]]:
    """transformers' greedy tokens for the prompts of ``LENGTHS``."""
    return [reference(model, p, 24) for p in prompts(LENGTHS)]


def _filled_cache(kind: str, *, slots: int = 4, max_len: int = 50) -> tuple[Any, Any]:
    torch.manual_seed(3)
    weights = extract_weights(tiny_llama(kv_heads=2))
    cache = StaticKVCache(weights.shape, slots, max_len, dtype=torch.float32,
                          device=torch.device("cpu"), kind=kind)  # type: ignore[arg-type]
    shape = weights.shape
    for layer in range(shape.num_layers):
        for slot in range(slots):
            k = torch.randn(shape.num_kv_heads, max_len, shape.head_dim)
            v = torch.randn(shape.num_kv_heads, max_len, shape.head_dim)
            cache.write_range(layer, slot, 0, k, v)
    return weights, cache


@pytest.mark.parametrize("kind", ["auto", "fp8"])
def test_own_length_attention_equals_the_masked_whole_cache(kind: str) -> None:
    weights, cache = _filled_cache(kind)
    shape = weights.shape
    group = shape.num_heads // shape.num_kv_heads
    positions = torch.tensor([0, 17, 49, 3])
    q = torch.randn(4, shape.num_kv_heads, group, shape.head_dim)
    visible = (torch.arange(cache.capacity)[None, :] <= positions[:, None])[:, None, None, :]
    for layer in range(shape.num_layers):
        keys, values = cache.read_slots(layer, 4)
        masked = _attend(q, keys, values, visible, "sdpa")
        own = attend_varlen_reference(q, cache, layer, (positions + 1).tolist())
        assert own.shape == masked.shape
        assert torch.allclose(own, masked, atol=1e-6, rtol=0)
    # The keys past a sequence's length do change the masked-free result: the lengths matter.
    longer = attend_varlen_reference(q, cache, 0, (positions + 2).tolist())
    assert not torch.allclose(longer, attend_varlen_reference(q, cache, 0,
                                                              (positions + 1).tolist()))


def test_own_length_attention_engine_decodes_like_transformers(
        model: Any, expected: list[list[int]]) -> None:
    engine = DecodeEngine(model, max_batch=3, max_seq_len=160, max_new_tokens=30,
                          stop_check_interval=3, attention="varlen")
    try:
        outputs = engine.generate([DecodeRequest(p, 24) for p in prompts(LENGTHS)])
    finally:
        engine.close()
    assert [o.token_ids for o in outputs] == expected


def test_prefill_in_chunks_fills_the_cache_like_one_piece(model: Any) -> None:
    weights = extract_weights(model)
    kernels = LayerKernels.plain()
    embeds = prompts([61], seed=12)[0]
    whole = StaticKVCache(weights.shape, 2, 80, dtype=torch.float32, device=torch.device("cpu"))
    pieces = StaticKVCache(weights.shape, 2, 80, dtype=torch.float32, device=torch.device("cpu"))
    rotary = RotaryTables(weights, whole.capacity)
    with torch.inference_mode():
        expected = prefill(weights, kernels, whole, rotary, 1, embeds)
        start = 0
        for size in (7, 1, 20, 16, 17):
            logits = prefill_chunk(weights, kernels, pieces, rotary, 1, embeds[start:start + size],
                                   start=start)
            start += size
    assert start == 61
    assert torch.allclose(pieces.keys[:, 1, :, :61], whole.keys[:, 1, :, :61], atol=1e-5)
    assert torch.allclose(pieces.values[:, 1, :, :61], whole.values[:, 1, :, :61], atol=1e-5)
    assert not pieces.keys[:, 1, :, 61:].any(), "nothing written past the prompt"
    assert not pieces.keys[:, 0].any(), "nothing written to another slot"
    assert torch.allclose(logits, expected, atol=1e-4)
    with pytest.raises(ValueError, match="exceed"):
        prefill_chunk(weights, kernels, pieces, rotary, 1, embeds[:30], start=61)


@pytest.mark.parametrize("attention", ["sdpa", "varlen"])
def test_chunked_prefill_engine_decodes_like_transformers(
        model: Any, expected: list[list[int]], attention: str) -> None:
    """Prompts of 12 to 90 tokens prefilled at most 16 tokens per step (less the decode
    tokens) while the other slots decode: the tokens are those of transformers."""
    engine = DecodeEngine(model, max_batch=3, max_seq_len=160, max_new_tokens=30,
                          stop_check_interval=2, attention=attention,  # type: ignore[arg-type]
                          prefill_chunk_tokens=16)
    try:
        outputs = engine.generate([DecodeRequest(p, 24) for p in prompts(LENGTHS)])
    finally:
        engine.close()
    assert [o.token_ids for o in outputs] == expected
    assert engine.stats.prefill_chunks >= sum(-(-n // 16) for n in LENGTHS)
    assert engine.stats.mean_batch() > 1.5
    assert all(o.first_token_s <= o.total_s for o in outputs)


def test_chunked_prefill_engine_honours_stops_and_cancellation(model: Any) -> None:
    prompt = prompts([50], seed=5)[0]
    full = reference(model, prompt, 20)
    stop = full[4]
    engine = DecodeEngine(model, max_batch=1, max_seq_len=100, max_new_tokens=20,
                          prefill_chunk_tokens=8)
    try:
        first = engine.submit(DecodeRequest(prompt, 20, stop_token_ids=(stop,)))
        queued = [engine.submit(DecodeRequest(prompt, 20)) for _ in range(3)]
        queued[1].cancel()
        assert first.result(timeout=60).token_ids == full[:full.index(stop)]
        assert queued[0].result(timeout=60).token_ids == full
        assert queued[2].result(timeout=60).token_ids == full
    finally:
        engine.close()
    assert queued[1].cancelled()
    assert engine.stats.requests == 3


# -- fp8 ------------------------------------------------------------------------------------


def test_accuracy_harness_finds_no_difference_between_equal_configurations(model: Any) -> None:
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from decode_accuracy import compare_configurations

    requests = prompts([30, 45, 22, 60], seed=21)
    same = compare_configurations(model, requests, 16, candidate={}, max_batch=2,
                                  logit_requests=2)
    assert same["greedy"]["identical_share"] == 1.0
    assert same["logits"]["max_abs"] == 0.0
    assert same["logits"]["teacher_forced_top1_agreement"] == 1.0
    assert same["logits"]["positions"] == 2 * 16


@pytest.mark.usefixtures("demo_bundle_built")
def test_fp8_demo_drafts_stay_close_to_float32() -> None:
    """The demo bundle's reports with fp8 weights and fp8 KV cache against its float32 ones:
    same phantoms, greedy; logits, tokens and CheXpert labels of the texts compared."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from decode_accuracy import compare_configurations, demo_bundle_prompts

    from tests.conftest import DEMO_BUNDLE_DIR

    model, tokenizer, requests, eos = demo_bundle_prompts(DEMO_BUNDLE_DIR, 8)
    result = compare_configurations(model, requests, 48, eos=eos, tokenizer=tokenizer,
                                    candidate={"fp8": True, "kv_cache": "fp8"},
                                    attention="varlen", logit_requests=4)
    assert result["logits"]["max_abs"] > 0, "fp8 changed nothing: it did not run"
    assert result["logits"]["max_abs_relative_to_range"] < 0.1
    assert result["logits"]["teacher_forced_top1_agreement"] >= 0.95
    assert result["greedy"]["position_agreement"] >= 0.75
    assert result["labels"]["reports"] == 8
    assert result["labels"]["observation_label_agreement"] >= 0.9
    # A float32 model: its projections shrink to a quarter, its (large) lm_head stays.
    assert 0.25 < result["step_bytes_ratio_at_mean_context"] < 0.5


def test_gpu_check_script_dry_run_writes_every_section(tmp_path: Path) -> None:
    """The prepared GPU script, on the CPU with tiny shapes: every section runs (the GPU-only
    kernels are marked skipped), parity holds, and the figures land in JSON and Markdown."""
    import json
    import subprocess

    out = tmp_path / "checks.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "gpu_checks.py"),
                             "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    for key in ("device", "copy_bandwidth_tb_s", "kernels", "parity_small_fp32", "baseline",
                "varlen_chunked", "fp8", "fp8_accuracy_7b", "fp8_accuracy_demo",
                "transformers"):
        assert key in data, key
        assert not (isinstance(data[key], dict) and "error" in data[key]), data[key]
    assert data["kernels"]["attention_kv_fp8"]["triton"].startswith("skipped")
    assert "varlen_configurations_use" not in data["kernels"]
    assert data["varlen_chunked"]["engine"]["attention"] == "varlen"
    assert data["kernels"]["attention_kv_auto"]["reference_vs_masked_max_abs"] < 1e-5
    for name in ("baseline", "varlen_chunked"):
        parity = data["parity_small_fp32"][name]
        assert parity["identical"] == parity["requests"]
        assert data[name]["parity_7b_shape"]["identical"] == \
            data[name]["parity_7b_shape"]["requests"]
    assert set(data["fp8"]["steps"]) == {"1", "2", "4"}
    assert data["fp8"]["engine"]["kv_cache"] == "fp8"
    throughput = data["varlen_chunked"]["throughput"]
    assert throughput["prefill_chunks"] >= throughput["studies"]
    assert data["baseline"]["throughput"]["prefill_chunks"] == 0
    assert throughput["time_to_first_token_s"]["p50"] <= throughput["latency_s"]["p50"]
    assert data["fp8_accuracy_7b"]["greedy"]["requests"] == 4
    assert "| fp8 | 4 |" in out.with_suffix(".md").read_text()


@pytest.mark.usefixtures("demo_bundle_built")
def test_the_bundle_manifest_switches_fp8_on_and_defaults_to_off(tmp_path: Path) -> None:
    import json
    import shutil

    import pydantic

    from tests.conftest import DEMO_BUNDLE_DIR
    from workers.inference.bundle import load_bundle
    from workers.inference.manifest import BundleManifest

    folder = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE_DIR, folder)
    raw = json.loads((folder / "manifest.json").read_text())
    raw.pop("engine", None)
    manifest = BundleManifest.model_validate(raw)
    assert (manifest.engine.weights, manifest.engine.kv_cache) == ("model", "model")
    with pytest.raises(pydantic.ValidationError):
        BundleManifest.model_validate({**raw, "engine": {"weights": "int4"}})
    manifest.engine = manifest.engine.model_copy(update={"weights": "fp8", "kv_cache": "fp8"})
    manifest.save(folder)
    bundle = load_bundle(folder, decode_engine=True, engine_batch=2)
    try:
        assert bundle.engine is not None
        described = bundle.engine.describe()
        assert described["fp8_weights"] and described["kv_cache"] == "fp8"
        sys.path.insert(0, str(REPO_ROOT / "bench"))
        from engine_parity import pseudo_images

        result = bundle.draft(pseudo_images(bundle, 1, seed=4)[0])
        assert result.new_tokens > 0 and result.text
    finally:
        if bundle.engine is not None:
            bundle.engine.close()
