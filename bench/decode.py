"""LLM decode benchmark: the decode engine against transformers' generate, and the floor.

GPU run (random weights of the Vicuna-7B shape in fp16, LLaVA-Rad-shaped requests of
1369 image tokens + ~60 prompt tokens, 256 new tokens forced)::

    python bench/decode.py --json OUT.json

reports, in one run: the measured device-to-device copy bandwidth and the per-step floor it
implies (all weights + every sequence's KV cache over that bandwidth), the engine's ms per
decode step and tokens/s at batch 1, 8, 32, 64, transformers' generate (default dynamic
cache and static cache, compiled, warmed) at the same batches, time to first token, a whole
study's latency (image encoder + prefill + 256 tokens) and studies per hour with batching.

CPU smoke run (what CI runs: a tiny LLaMA, engine greedy == transformers greedy)::

    python bench/decode.py --smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from workers.inference.engine import DecodeEngine, DecodeRequest, SamplingSettings  # noqa: E402

KIB = 1024
GIB = 1024**3


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def vicuna_config(**overrides: Any) -> Any:
    """A ``LlamaConfig`` of the Vicuna-7B v1.5 shape."""
    from transformers import LlamaConfig

    values: dict[str, Any] = dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def random_model(config: Any, dtype: torch.dtype, device: str) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` built directly on ``device``."""
    from transformers import LlamaForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def prompt_embeds(count: int, length: int, hidden: int, *, device: str, dtype: torch.dtype,
                  seed: int = 0) -> list[torch.Tensor]:
    """Random (length, hidden) prompt embeddings standing in for spliced image + text."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return [(torch.randn(length, hidden, generator=generator) * 0.02).to(device=device, dtype=dtype)
            for _ in range(count)]


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: str, gib: float = 2.0, reps: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read and written."""
    source = torch.empty(int(gib * GIB), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        target.copy_(source)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000.0 / reps
    del source, target
    torch.cuda.empty_cache()
    return 2 * gib * GIB / seconds


def hf_generate_timing(model: Any, embeds: torch.Tensor, new_tokens: int, *,
                       cache: str | None) -> dict[str, float]:
    """ms per decode step and prefill ms of ``model.generate`` for one batch.

    A 1-token run measures prefill; the per-step figure is (full run - prefill) / (n - 1).
    With ``cache="static"`` each shape is run once first (compilation) and then timed.
    """
    from transformers import GenerationConfig

    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)

    def run(tokens: int) -> float:
        config = GenerationConfig(do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                                  eos_token_id=None, pad_token_id=0,
                                  cache_implementation=cache)
        synchronize(embeds.device)
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config)
        synchronize(embeds.device)
        return time.perf_counter() - started

    if cache == "static":
        run(new_tokens)
        run(1)
    prefill = run(1)
    total = run(new_tokens)
    step_ms = 1000.0 * (total - prefill) / max(1, new_tokens - 1)
    return {"ms_per_step": step_ms, "prefill_ms": 1000.0 * prefill,
            "tokens_per_s": embeds.shape[0] * 1000.0 / step_ms}


def greedy_reference(model: Any, embeds: torch.Tensor, new_tokens: int,
                     eos: int | None) -> list[int]:
    """transformers' greedy continuation of one (T, hidden) prompt, cut at ``eos``."""
    from transformers import GenerationConfig

    config = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, eos_token_id=eos,
                              pad_token_id=0)
    mask = torch.ones((1, embeds.shape[0]), dtype=torch.long, device=embeds.device)
    with torch.inference_mode():
        ids: list[int] = model.generate(inputs_embeds=embeds[None], attention_mask=mask,
                                        generation_config=config)[0].tolist()
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return ids


def compare_greedy(model: Any, engine: DecodeEngine, prompts: list[torch.Tensor],
                   new_tokens: int, eos: int | None) -> dict[str, Any]:
    """Engine (all prompts batched together) against transformers (one at a time)."""
    stops = () if eos is None else (eos,)
    outputs = engine.generate([DecodeRequest(p, new_tokens, stop_token_ids=stops)
                               for p in prompts])
    agree: list[int] = []
    identical = 0
    for prompt, output in zip(prompts, outputs, strict=True):
        reference = greedy_reference(model, prompt, new_tokens, eos)
        same = 0
        for a, b in zip(reference, output.token_ids, strict=False):
            if a != b:
                break
            same += 1
        agree.append(same)
        identical += int(reference == output.token_ids)
    return {"requests": len(prompts), "identical": identical,
            "tokens_agreeing_before_first_difference": agree}


def smoke() -> int:
    """CPU check: a tiny LLaMA, engine greedy equals transformers greedy token for token."""
    torch.manual_seed(0)
    config = vicuna_config(vocab_size=211, hidden_size=64, intermediate_size=160,
                           num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=512)
    model = random_model(config, torch.float32, "cpu")
    engine = DecodeEngine(model, max_batch=3, max_seq_len=160, max_new_tokens=48,
                          stop_check_interval=4)
    lengths = [40, 73, 12, 55, 90, 31, 64]
    prompts = [p[:n] for p, n in zip(prompt_embeds(len(lengths), 96, 64, device="cpu",
                                                   dtype=torch.float32, seed=1), lengths,
                                     strict=True)]
    prompts = [p * 50 for p in prompts]
    step_ms = engine.measure_step(3, context=100, steps=20)
    started = time.perf_counter()
    result = compare_greedy(model, engine, prompts, 40, eos=None)
    engine.close()
    result.update({"device": "cpu", "seconds": round(time.perf_counter() - started, 2),
                   "engine": engine.describe(), "step_ms": round(step_ms, 3)})
    print(json.dumps(result, indent=2))
    ok = result["identical"] == result["requests"]
    log("smoke: engine greedy == transformers greedy" if ok else "smoke: MISMATCH")
    return 0 if ok else 1


class Report:
    """Results written to JSON after every section, so a cut-off run keeps what it measured."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        log(f"{key}: {json.dumps(value, default=str)[:400]}")
        if self.path is not None:
            self.path.write_text(json.dumps(self.data, indent=2, default=str))


def guarded(report: Report, key: str, deadline: float, fn: Callable[[], Any]) -> None:
    """Run one section unless the time budget is spent; record errors instead of dying."""
    if time.monotonic() > deadline:
        report.put(key, {"skipped": "time budget spent"})
        return
    try:
        report.put(key, fn())
    except Exception as exc:  # noqa: BLE001 - a benchmark section failing is a result
        report.put(key, {"error": f"{type(exc).__name__}: {exc}"[:500]})
    torch.cuda.empty_cache()


def gpu_run(args: argparse.Namespace) -> int:
    """The full GPU benchmark (see the module docstring)."""
    deadline = time.monotonic() + args.budget_s
    report = Report(args.json)
    device = "cuda"
    props = torch.cuda.get_device_properties(0)
    report.put("device", {"name": props.name, "memory_gib": round(props.total_memory / GIB, 1),
                          "torch": torch.__version__, "cuda": torch.version.cuda})
    bandwidth = copy_bandwidth(device)
    report.put("copy_bandwidth_tb_s", round(bandwidth / 1e12, 3))
    batches = [int(b) for b in args.batches.split(",")]
    prompt_len = args.image_tokens + args.prompt_tokens
    new = args.new_tokens

    if args.parity:
        def parity() -> dict[str, Any]:
            small = random_model(vicuna_config(num_hidden_layers=2), torch.float32, device)
            eng = DecodeEngine(small, max_batch=4, max_seq_len=prompt_len + 64,
                               max_new_tokens=64)
            prompts = prompt_embeds(6, prompt_len, 4096, device=device, dtype=torch.float32)
            fp32 = compare_greedy(small, eng, prompts, 48, eos=None)
            eng.close()
            del eng, small
            return {"fp32_2_layers": fp32}
        guarded(report, "parity_gpu", deadline, parity)

    log("building the Vicuna-7B-shaped model (random fp16 weights)")
    model = random_model(vicuna_config(), torch.float16, device)
    engine = DecodeEngine(model, max_batch=max(batches), max_seq_len=prompt_len + new + 16,
                          max_new_tokens=new, fused_kernels=args.fused,
                          attention=args.attention, stop_check_interval=args.stop_check,
                          prefill_chunk_tokens=args.prefill_chunk_tokens, fp8=args.fp8,
                          kv_cache=args.kv_cache)
    info = engine.describe()
    report.put("engine", info)
    mean_context = prompt_len + new / 2

    def floor_ms(batch: int) -> float:
        return 1000.0 * engine.step_bytes(batch, int(mean_context)) / bandwidth

    def engine_steps() -> dict[str, Any]:
        rows = {}
        for batch in batches:
            ms = engine.measure_step(batch, context=int(mean_context), steps=args.steps)
            rows[str(batch)] = {"ms_per_step": round(ms, 3), "floor_ms": round(floor_ms(batch), 3),
                                "x_floor": round(ms / floor_ms(batch), 3),
                                "tokens_per_s": round(batch * 1000.0 / ms, 1)}
        return rows
    guarded(report, "engine_greedy", deadline, engine_steps)

    def engine_sampled() -> dict[str, Any]:
        return {str(b): round(engine.measure_step(b, context=int(mean_context), steps=args.steps,
                                                  greedy_only=False), 3)
                for b in (batches[0], batches[-1])}
    guarded(report, "engine_sampled_ms_per_step", deadline, engine_sampled)

    def parity_7b() -> dict[str, Any]:
        prompts = prompt_embeds(4, prompt_len, 4096, device=device, dtype=torch.float16, seed=3)
        return compare_greedy(model, engine, prompts, 32, eos=None)
    if args.parity:
        guarded(report, "parity_7b_fp16", deadline, parity_7b)

    def single_study() -> dict[str, Any]:
        return study_latency(engine, prompt_len, new, args.reps)
    guarded(report, "study_batch1", deadline, single_study)

    def throughput() -> dict[str, Any]:
        count = args.studies
        prompts = prompt_embeds(count, prompt_len, 4096, device=device, dtype=torch.float16, seed=7)
        sampling = SamplingSettings(temperature=0.0)
        started = time.perf_counter()
        outputs = engine.generate([DecodeRequest(p, new, sampling=sampling) for p in prompts])
        wall = time.perf_counter() - started
        return {"studies": count, "seconds": round(wall, 2),
                "studies_per_hour": round(3600 * count / wall),
                "ttft_median_s": round(statistics.median(o.first_token_s for o in outputs), 3),
                "latency_median_s": round(statistics.median(o.total_s for o in outputs), 3),
                "mean_batch": round(engine.stats.mean_batch(), 1),
                "mean_batch_while_queued": round(engine.stats.mean_batch_while_queued(), 1),
                "tokens": sum(len(o.token_ids) for o in outputs)}
    guarded(report, "throughput", deadline, throughput)
    engine.close()
    torch.cuda.empty_cache()

    def hf_rows(cache: str) -> None:
        rows: dict[str, Any] = {}
        for batch in [int(b) for b in (args.hf_batches or args.batches).split(",")]:
            if time.monotonic() > deadline:
                rows[str(batch)] = {"skipped": "time budget spent"}
                continue
            try:
                embeds = torch.stack(prompt_embeds(batch, prompt_len, 4096, device=device,
                                                   dtype=torch.float16))
                timing = hf_generate_timing(model, embeds, args.hf_new_tokens,
                                            cache=None if cache == "default" else cache)
                timing["x_floor"] = timing["ms_per_step"] / floor_ms(batch)
                rows[str(batch)] = {k: round(v, 3) for k, v in timing.items()}
                del embeds
            except Exception as exc:  # noqa: BLE001 - a failing configuration is a result
                rows[str(batch)] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            log(f"hf_{cache}_{batch}: {rows[str(batch)]}")
            torch.cuda.empty_cache()
        report.put(f"hf_{cache}", rows)

    caches = args.hf_caches.split(",")
    for cache in caches[:1]:
        hf_rows(cache)
    if args.compare_fused != args.fused:
        def other_kernels() -> dict[str, Any]:
            other = DecodeEngine(model, max_batch=max(batches), max_seq_len=prompt_len + new + 16,
                                 max_new_tokens=new, fused_kernels=args.compare_fused,
                                 attention=args.attention)
            try:
                return {str(b): round(other.measure_step(b, context=int(mean_context),
                                                         steps=args.steps), 3)
                        for b in batches}
            finally:
                other.close()
        label = "fused" if args.compare_fused else "plain"
        guarded(report, f"engine_{label}_kernels_ms_per_step", deadline, other_kernels)
    for cache in caches[1:]:
        hf_rows(cache)
    return 0


def study_latency(engine: DecodeEngine, prompt_len: int, new: int, reps: int) -> dict[str, Any]:
    """One study at batch 1: LLaVA-Rad image encoder (fp16, GPU) + prefill + generation."""
    from workers.inference.encoder import build_image_encoder
    from workers.inference.manifest import ProjectorSpec, VisionSpec

    vision = VisionSpec(kind="dinov2_vit", image_size=518, patch_size=14, width=768, layers=12,
                        heads=12, in_channels=3, select_layer=-2, drop_cls=True,
                        final_norm=False, layerscale=True)
    encoder = build_image_encoder(vision, ProjectorSpec(kind="mlp2x_gelu", in_dim=768,
                                                        out_dim=4096))
    encoder = encoder.to(device="cuda", dtype=torch.float16).eval()
    pixels = torch.randn(1, 3, 518, 518, device="cuda", dtype=torch.float16)
    text = torch.randn(prompt_len - 1369, 4096, device="cuda", dtype=torch.float16) * 0.02
    timings, encode_ms, ttft = [], [], []
    for _ in range(reps + 1):
        torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            image = encoder(pixels)[0]
        torch.cuda.synchronize()
        encoded = time.perf_counter()
        output = engine.generate([DecodeRequest(torch.cat([text[:5], image, text[5:]]), new)])[0]
        finished = time.perf_counter()
        timings.append(finished - started)
        encode_ms.append(1000 * (encoded - started))
        ttft.append(encoded - started + output.first_token_s)
    timings, encode_ms, ttft = timings[1:], encode_ms[1:], ttft[1:]
    batch16 = torch.randn(16, 3, 518, 518, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        encoder(batch16)
        torch.cuda.synchronize()
        started = time.perf_counter()
        encoder(batch16)
        torch.cuda.synchronize()
    return {"image_tokens": int(image.shape[0]), "new_tokens": new,
            "seconds_median": round(statistics.median(timings), 3),
            "encoder_ms_median": round(statistics.median(encode_ms), 2),
            "encoder_ms_per_image_batch16": round(1000 * (time.perf_counter() - started) / 16, 2),
            "time_to_first_token_s_median": round(statistics.median(ttft), 3)}


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, parity check")
    parser.add_argument("--json", type=Path, help="write results here (after every section)")
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--image-tokens", type=int, default=1369)
    parser.add_argument("--prompt-tokens", type=int, default=60)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--hf-new-tokens", type=int, default=256,
                        help="tokens per transformers run (ms/step is what is compared)")
    parser.add_argument("--hf-caches", default="default,static")
    parser.add_argument("--hf-batches", default="",
                        help="batches for transformers (default: --batches)")
    parser.add_argument("--compare-fused", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the engine with (or without) fused kernels")
    parser.add_argument("--steps", type=int, default=100, help="timed engine steps per batch")
    parser.add_argument("--studies", type=int, default=192, help="studies in the throughput run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--attention", choices=("sdpa", "matmul", "varlen"), default="sdpa")
    parser.add_argument("--prefill-chunk-tokens", type=int, default=None,
                        help="chunked prefill: token budget per engine step (default: whole "
                             "prompts)")
    parser.add_argument("--fp8", action="store_true", help="E4M3 weights")
    parser.add_argument("--kv-cache", choices=("auto", "fp8"), default="auto")
    parser.add_argument("--stop-check", type=int, default=16)
    parser.add_argument("--parity", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="skip remaining sections after this many seconds")
    args = parser.parse_args(argv)
    if args.compare_fused is None:
        args.compare_fused = args.fused
    if args.smoke:
        return smoke()
    if not torch.cuda.is_available():
        parser.error("the full benchmark needs a CUDA GPU; use --smoke on a CPU")
    return gpu_run(args)


if __name__ == "__main__":
    sys.exit(main())
