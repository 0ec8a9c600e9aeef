"""The decode engine against transformers' generate on tiny LLaMA models (CPU).

The engine must pick the same greedy tokens as ``model.generate`` whatever shares its
batch, honour stop tokens and budgets, and sample from a sequence's own seed alone.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from workers.inference.engine import (
    DecodeEngine,
    DecodeRequest,
    SamplingSettings,
    unsupported_reason,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
HIDDEN = 64


def tiny_llama(*, kv_heads: int = 4, seed: int = 0) -> Any:
    """A randomly initialised 3-layer LLaMA without an EOS token (every run is full length);
    scaled so that greedy choices are not near-ties."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=HIDDEN, intermediate_size=160,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=kv_heads,
                         max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1,
                         eos_token_id=None, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.mul_(4.0)
    return model


def prompts(lengths: list[int], seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, HIDDEN, generator=generator) for n in lengths]


def reference(model: Any, embeds: torch.Tensor, new_tokens: int, **sampling: Any) -> list[int]:
    """transformers' continuation of one (T, hidden) prompt, no stop token."""
    config = GenerationConfig(max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0,
                              do_sample=False, **sampling)
    mask = torch.ones((1, embeds.shape[0]), dtype=torch.long)
    with torch.inference_mode():
        ids: list[int] = model.generate(inputs_embeds=embeds[None], attention_mask=mask,
                                        generation_config=config)[0].tolist()
    return ids


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_llama()


@pytest.fixture()
def engine(model: Any) -> Any:
    engine = DecodeEngine(model, max_batch=3, max_seq_len=160, max_new_tokens=40,
                          stop_check_interval=3)
    yield engine
    engine.close()


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["multi-head", "grouped-query"])
def test_greedy_equals_transformers_with_more_requests_than_slots(kv_heads: int) -> None:
    model = tiny_llama(kv_heads=kv_heads)
    expected = [reference(model, p, 30) for p in prompts([40, 73, 12, 55, 90, 31, 64])]
    engine = DecodeEngine(model, max_batch=3, max_seq_len=160, max_new_tokens=40,
                          stop_check_interval=3)
    try:
        outputs = engine.generate([DecodeRequest(p, 30) for p in
                                   prompts([40, 73, 12, 55, 90, 31, 64])])
    finally:
        engine.close()
    assert [o.token_ids for o in outputs] == expected
    assert all(not o.stopped and o.prompt_tokens > 0 for o in outputs)
    assert engine.stats.requests == 7 and engine.stats.tokens == 7 * 30
    assert engine.stats.mean_batch() > 1.5, "sequences were not decoded together"


def test_stop_token_ends_a_sequence_and_frees_its_slot(model: Any, engine: Any) -> None:
    prompt = prompts([50], seed=5)[0]
    full = reference(model, prompt, 30)
    stop = full[6]
    cut = full.index(stop)
    outputs = engine.generate([DecodeRequest(prompt, 30, stop_token_ids=(stop,)),
                               DecodeRequest(prompt, 30)])
    assert outputs[0].token_ids == full[:cut]
    assert outputs[0].stopped
    assert outputs[1].token_ids == full and not outputs[1].stopped


def test_budget_and_cache_limits(model: Any, engine: Any) -> None:
    prompt = prompts([20])[0]
    assert engine.generate([DecodeRequest(prompt, 5)])[0].token_ids == reference(model, prompt, 5)
    near_end = prompts([150])[0]
    fitted = engine.generate([DecodeRequest(near_end, 40)])[0]
    assert len(fitted.token_ids) == 160 - 150, "the budget must shrink to fit the cache"
    with pytest.raises(ValueError, match="does not fit"):
        engine.submit(DecodeRequest(prompts([160])[0], 5))


def test_repetition_penalty_matches_transformers(model: Any, engine: Any) -> None:
    prompt = prompts([33], seed=9)[0]
    expected = reference(model, prompt, 25, repetition_penalty=1.8)
    got = engine.generate([DecodeRequest(prompt, 25,
                                         sampling=SamplingSettings(repetition_penalty=1.8))])
    assert got[0].token_ids == expected
    assert expected != reference(model, prompt, 25), "penalty too weak to be tested"


def test_sampled_tokens_depend_only_on_the_sequences_own_seed(engine: Any) -> None:
    prompt, other = prompts([45, 70], seed=3)
    sampling = SamplingSettings(temperature=1.5, top_p=0.95)
    alone = engine.generate([DecodeRequest(prompt, 30, sampling=sampling, seed=11)])[0]
    crowded = engine.generate([
        DecodeRequest(other, 30, sampling=sampling, seed=4),
        DecodeRequest(prompt, 30, sampling=sampling, seed=11),
        DecodeRequest(other, 30),
    ])[1]
    reseeded = engine.generate([DecodeRequest(prompt, 30, sampling=sampling, seed=12)])[0]
    assert crowded.token_ids == alone.token_ids
    assert reseeded.token_ids != alone.token_ids


def test_top_k_one_samples_the_greedy_sequence(model: Any, engine: Any) -> None:
    prompt = prompts([28], seed=2)[0]
    sampled = engine.generate([DecodeRequest(
        prompt, 20, sampling=SamplingSettings(temperature=0.9, top_k=1), seed=3)])[0]
    assert sampled.token_ids == reference(model, prompt, 20)


def test_concurrent_callers_share_batches_and_get_their_own_results(model: Any,
                                                                    engine: Any) -> None:
    lengths = [30, 61, 17, 44, 52, 25]
    expected = [reference(model, p, 16) for p in prompts(lengths, seed=8)]
    results: dict[int, list[int]] = {}
    barrier = threading.Barrier(len(lengths))

    def caller(index: int, prompt: torch.Tensor) -> None:
        barrier.wait()
        results[index] = engine.generate([DecodeRequest(prompt, 16)])[0].token_ids

    threads = [threading.Thread(target=caller, args=(i, p))
               for i, p in enumerate(prompts(lengths, seed=8))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [results[i] for i in range(len(lengths))] == expected
    assert engine.stats.mean_batch() > 1.0


def test_closed_engine_refuses_work_and_measure_step_leaves_slots_free(model: Any) -> None:
    engine = DecodeEngine(model, max_batch=2, max_seq_len=64, max_new_tokens=8)
    assert engine.measure_step(2, context=20, steps=3) > 0
    prompt = prompts([10])[0]
    assert engine.generate([DecodeRequest(prompt, 4), DecodeRequest(prompt, 4)])[0].token_ids \
        == reference(model, prompt, 4)
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(DecodeRequest(prompt, 4))


def test_unsupported_models_are_named() -> None:
    model = tiny_llama()
    assert unsupported_reason(model) is None
    model.config.hidden_act = "gelu"
    assert "SiLU" in (unsupported_reason(model) or "")


def test_benchmark_smoke_run_passes() -> None:
    result = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "decode.py"), "--smoke"],
                            capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "engine greedy == transformers greedy" in result.stderr


def test_engine_recovers_after_an_error_in_its_thread(
        model: Any, engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure inside the engine thread fails the waiting requests (none is left hanging)
    and the next request starts a new thread."""
    import workers.inference.engine.engine as engine_module

    real_prefill = engine_module.prefill

    def broken_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(engine_module, "prefill", real_prefill)
        raise RuntimeError("device fault")

    monkeypatch.setattr(engine_module, "prefill", broken_once)
    prompt = prompts([15], seed=4)[0]
    first = engine.submit(DecodeRequest(prompt, 6))
    with pytest.raises(RuntimeError, match="device fault"):
        first.result(timeout=30)
    again = engine.submit(DecodeRequest(prompt, 6))
    assert again.result(timeout=30).token_ids == reference(model, prompt, 6)


def test_a_prompt_of_the_wrong_width_is_refused_at_once(engine: Any) -> None:
    with pytest.raises(ValueError, match="must be"):
        engine.submit(DecodeRequest(torch.randn(12, HIDDEN // 2), 4))
