"""Every GPU check and benchmark of the decode engine in one run, figures to one file.

GPU run (one H100/H200, about 8 minutes; random fp16 weights of the Vicuna-7B shape,
LLaVA-Rad-shaped requests of 1,369 image + 60 prompt embeddings, 256 new tokens)::

    python bench/gpu_checks.py --out gpu_checks.json      # also writes gpu_checks.md

Sections, each written to the JSON file as soon as it is measured (a run cut short keeps
what it has), in this order:

1. ``kernels``: the Triton own-length attention kernel (fp16 and fp8 KV cache) against the
   PyTorch reference, and the fp8 tensor-core product against the reference product;
2. ``parity_small_fp32``: engine configurations against transformers' greedy decoding, fp32,
   2 layers of the 7B width;
3. per engine configuration (``baseline``: whole-cache attention, whole-prompt prefill, as
   measured before; ``varlen_chunked``: own-length attention and chunked prefill;
   ``fp8``: the same with E4M3 weights and KV cache): ms per decode step at batch 1, 8, 32,
   64 against the fp16 floor (all weights + every sequence's KV cache over the measured copy
   bandwidth) and against the configuration's own floor; greedy parity of the 7B fp16
   shape with transformers; the throughput run (studies per hour, mean running batch, slot
   occupancy while requests wait, time to first token, latency and time per output token
   percentiles);
4. ``fp8_accuracy_7b``: fp8 against fp16 on the same requests (greedy token agreement,
   teacher-forced logit error); ``fp8_accuracy_demo``: the same on the demo bundle's
   reports of held-out phantoms, with the CheXpert labels of the texts compared;
   ``fp8_accuracy_bundle`` with ``--bundle`` (an imported LLaVA-Rad bundle, real weights);
5. ``transformers``: ``generate`` ms per step at the same batches (static cache compiled,
   default cache at batch 1), as long as the time budget lasts.

``--dry-run`` runs the same code on the CPU with tiny shapes (the test suite does, so the
script cannot rot); GPU-only parts are recorded as skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from decode import (  # noqa: E402
    GIB,
    compare_greedy,
    hf_generate_timing,
    log,
    prompt_embeds,
    random_model,
    synchronize,
    vicuna_config,
)
from decode_accuracy import (  # noqa: E402
    compare_configurations,
    demo_bundle_prompts,
    generate_greedy,
    greedy_agreement,
    logit_error,
)

from workers.inference.engine import DecodeEngine, DecodeRequest  # noqa: E402
from workers.inference.engine.engine import EngineStats  # noqa: E402
from workers.inference.engine.forward import (  # noqa: E402
    StaticKVCache,
    _attend,
    attend_varlen_reference,
)
from workers.inference.engine.fp8 import (  # noqa: E402
    Fp8Matrix,
    fp8_linear_reference,
    fp8_linear_scaled_mm,
)
from workers.inference.engine.weights import DecoderShape  # noqa: E402

DEMO_BUNDLE = REPO_ROOT / "var" / "models" / "demo"


@dataclass(frozen=True)
class Profile:
    """Shapes and sizes of one run."""

    device: str
    dtype: torch.dtype
    config: dict[str, Any]
    small_config: dict[str, Any]
    batches: tuple[int, ...]
    prompt_len: int
    new_tokens: int
    steps: int
    studies: int
    parity_prompts: int
    parity_tokens: int
    accuracy_requests: int
    accuracy_tokens: int
    logit_requests: int
    demo_requests: int
    demo_tokens: int
    chunk_tokens: int
    stop_check: int
    fused: bool
    sharpen: float = 1.0
    prompt_scale: float = 1.0

    @classmethod
    def gpu(cls, args: argparse.Namespace) -> Profile:
        """The Vicuna-7B shape on CUDA."""
        return cls(device="cuda", dtype=torch.float16, config={},
                   small_config={"num_hidden_layers": 2}, batches=(1, 8, 32, 64),
                   prompt_len=1369 + 60, new_tokens=256, steps=50, studies=args.studies,
                   parity_prompts=4, parity_tokens=32, accuracy_requests=args.accuracy_requests,
                   accuracy_tokens=args.accuracy_tokens, logit_requests=8,
                   demo_requests=64, demo_tokens=128, chunk_tokens=args.chunk_tokens,
                   stop_check=args.stop_check, fused=True)

    @classmethod
    def dry_run(cls) -> Profile:
        """Tiny shapes on the CPU: every section's code runs, in seconds."""
        tiny = dict(vocab_size=211, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
        return cls(device="cpu", dtype=torch.float32, config=tiny, small_config=tiny,
                   batches=(1, 2, 4), prompt_len=40, new_tokens=10, steps=3, studies=10,
                   parity_prompts=3, parity_tokens=8, accuracy_requests=4, accuracy_tokens=8,
                   logit_requests=2, demo_requests=3, demo_tokens=16, chunk_tokens=48,
                   stop_check=4, fused=False, sharpen=4.0, prompt_scale=50.0)

    def model(self, config: dict[str, Any], dtype: torch.dtype, seed: int = 0) -> Any:
        """A random LLaMA (weights fixed by ``seed``); in the dry run its matrices are scaled
        up so that greedy choices are not near-ties (the tiny model's parity then does not
        hinge on rounding)."""
        torch.manual_seed(seed)
        model = random_model(vicuna_config(**config), dtype, self.device)
        if self.sharpen != 1.0:
            with torch.no_grad():
                for parameter in model.parameters():
                    if parameter.ndim == 2:
                        parameter.mul_(self.sharpen)
        return model

    def prompts(self, count: int, *, dtype: torch.dtype | None = None, seed: int = 0
                ) -> list[torch.Tensor]:
        """Random prompt embeddings of the run's length and width."""
        return [p * self.prompt_scale if self.prompt_scale != 1.0 else p
                for p in prompt_embeds(count, self.prompt_len, self.hidden, device=self.device,
                                       dtype=dtype or self.dtype, seed=seed)]

    @property
    def max_batch(self) -> int:
        """Slots of the engines."""
        return max(self.batches)

    @property
    def mean_context(self) -> int:
        """Context of a sequence halfway through its output."""
        return self.prompt_len + self.new_tokens // 2

    @property
    def hidden(self) -> int:
        """Model width."""
        return int(vicuna_config(**self.config).hidden_size)


class Report:
    """Results: JSON rewritten after every section, Markdown summary at the end."""

    def __init__(self, path: Path, deadline: float) -> None:
        self.path = path
        self.deadline = deadline
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        """Record one section."""
        self.data[key] = value
        log(f"{key}: {json.dumps(value, default=str)[:300]}")
        self.path.write_text(json.dumps(self.data, indent=2, default=str))

    def section(self, key: str, fn: Callable[[], Any]) -> Any:
        """Run a section unless the budget is spent; an error is recorded as its result."""
        if time.monotonic() > self.deadline:
            self.put(key, {"skipped": "time budget spent"})
            return None
        started = time.monotonic()
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - a failing section is a result
            value = {"error": f"{type(exc).__name__}: {exc}"[:800]}
        if isinstance(value, dict):
            value.setdefault("section_seconds", round(time.monotonic() - started, 1))
        self.put(key, value)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return value


def copy_bandwidth(device: str, gib: float) -> float:
    """Device-to-device copy bandwidth in bytes/s (bytes read + written)."""
    source = torch.empty(int(gib * GIB), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    synchronize(device)
    started = time.perf_counter()
    reps = 10
    for _ in range(reps):
        target.copy_(source)
    synchronize(device)
    seconds = (time.perf_counter() - started) / reps
    return 2 * gib * GIB / seconds


# -- 1. kernels -----------------------------------------------------------------------------


def kernel_checks(profile: Profile) -> dict[str, Any]:
    """Own-length attention (Triton on a GPU, reference everywhere) and fp8 products."""
    from workers.inference.engine import triton_attention

    device = torch.device(profile.device)
    positions = 1700 if profile.device == "cuda" else 300
    shape = DecoderShape(num_layers=1, hidden=4096, intermediate=11008, vocab=32000,
                         num_heads=32, num_kv_heads=8, head_dim=128, rms_eps=1e-5,
                         max_positions=4096)
    result: dict[str, Any] = {}
    generator = torch.Generator(device="cpu").manual_seed(0)
    for kind in ("auto", "fp8"):
        cache = StaticKVCache(shape, 6, positions, dtype=profile.dtype, device=device,
                              kind=kind)  # type: ignore[arg-type]
        k = torch.randn(6, 8, positions, 128, generator=generator).to(device, profile.dtype)
        v = torch.randn(6, 8, positions, 128, generator=generator).to(device, profile.dtype)
        for slot in range(6):
            cache.write_range(0, slot, 0, k[slot], v[slot])
        lengths = torch.tensor([1, 63, 64, 257, positions - 37, positions], device=device)
        q = torch.randn(6, 8, 4, 128, generator=generator).to(device, profile.dtype)
        reference = attend_varlen_reference(q, cache, 0, lengths.tolist())
        keys, values = cache.read_slots(0, 6)
        visible = (torch.arange(cache.capacity, device=device)[None, :]
                   < lengths[:, None])[:, None, None, :]
        masked = _attend(q, keys, values, visible, "sdpa")
        row: dict[str, Any] = {
            "reference_vs_masked_max_abs": float((reference - masked).abs().max()),
        }
        if triton_attention.available(device):
            kernel = triton_attention.attend_varlen_triton(
                q, cache.keys[0], cache.values[0], lengths,
                None if cache.key_scales is None else cache.key_scales[0],
                None if cache.value_scales is None else cache.value_scales[0])
            row["triton_vs_reference_max_abs"] = float((kernel - reference).abs().max())
            row["triton_ok"] = bool(torch.allclose(kernel.float(), reference.float(),
                                                   atol=2e-2, rtol=2e-2))
        else:
            row["triton"] = "skipped: no CUDA device or no Triton"
        result[f"attention_kv_{kind}"] = row
        cache.release()
    weight = (torch.randn(4096, 4096, generator=generator) * 0.02).to(device, profile.dtype)
    x = torch.randn(16, 4096, generator=generator).to(device, profile.dtype)
    matrix = Fp8Matrix.from_weight(weight)
    reference = fp8_linear_reference(x, matrix).float()
    fast = fp8_linear_scaled_mm(x, matrix).float()
    exact = (x.float() @ weight.float().T)
    result["fp8_product"] = {
        "scaled_mm_vs_reference_max_abs": float((fast - reference).abs().max()),
        "fp8_vs_exact_relative": float((reference - exact).norm() / exact.norm()),
        "output_max_abs": float(exact.abs().max()),
    }
    return result


def checked_kernels(profile: Profile, out: Path) -> dict[str, Any]:
    """:func:`kernel_checks` in a child process, so that a kernel fault (which leaves the
    CUDA context unusable) cannot take the rest of the run with it. When the Triton kernel
    fails or faults, the later configurations use the masked attention kernel instead, and
    the report says so."""
    import subprocess

    target = out.with_name(out.stem + ".kernels.json")
    command = [sys.executable, __file__, "--kernels-only", "--out", str(target)]
    if profile.device == "cpu":
        command.append("--dry-run")
    child = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if child.returncode != 0 or not target.is_file():
        VARLEN_KERNEL_OK[0] = False
        return {"error": f"kernel check exited {child.returncode}: {child.stderr[-600:]}",
                "varlen_configurations_use": "sdpa"}
    result: dict[str, Any] = json.loads(target.read_text())
    failed = [key for key, row in result.items()
              if isinstance(row, dict) and row.get("triton_ok") is False]
    if failed:
        VARLEN_KERNEL_OK[0] = False
        result["varlen_configurations_use"] = f"sdpa (Triton kernel wrong for {failed})"
    return result


# -- 2-3. engine configurations -------------------------------------------------------------


VARLEN_KERNEL_OK = [True]
"""Whether own-length attention may be used (set from the kernel check's result)."""

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "baseline": {"attention": "sdpa"},
    "varlen_chunked": {"attention": "varlen", "chunked": True},
    "fp8": {"attention": "varlen", "chunked": True, "fp8": True, "kv_cache": "fp8"},
}


def engine_for(model: Any, profile: Profile, name: str, *, max_batch: int | None = None,
               max_seq_len: int | None = None, max_new_tokens: int | None = None
               ) -> DecodeEngine:
    """A decode engine in configuration ``name`` (own-length attention replaced by the masked
    kernel when the Triton kernel failed its check: see :func:`checked_kernels`)."""
    options = dict(CONFIGURATIONS[name])
    if options.get("attention") == "varlen" and not VARLEN_KERNEL_OK[0]:
        options["attention"] = "sdpa"
    chunked = options.pop("chunked", False)
    return DecodeEngine(
        model, max_batch=max_batch or profile.max_batch,
        max_seq_len=max_seq_len or profile.prompt_len + profile.new_tokens + 16,
        max_new_tokens=max_new_tokens or profile.new_tokens, fused_kernels=profile.fused,
        stop_check_interval=profile.stop_check,
        prefill_chunk_tokens=profile.chunk_tokens if chunked else None, **options)


def parity_small(profile: Profile) -> dict[str, Any]:
    """Each configuration against transformers, fp32, 2 layers (greedy, batched engine)."""
    model = profile.model(profile.small_config, torch.float32)
    count, tokens = (6, 48) if profile.device == "cuda" else (3, profile.parity_tokens)
    prompts = profile.prompts(count, dtype=torch.float32)
    result = {}
    for name in ("baseline", "varlen_chunked"):
        engine = engine_for(model, profile, name, max_batch=4,
                            max_seq_len=profile.prompt_len + tokens + 16, max_new_tokens=tokens)
        try:
            result[name] = compare_greedy(model, engine, prompts, tokens, eos=None)
        finally:
            engine.close()
    return result


def step_rows(engine: DecodeEngine, profile: Profile, bandwidth: float,
              fp16_bytes: Callable[[int], int]) -> dict[str, Any]:
    """ms per decode step at each batch, against the fp16 floor and the engine's own."""
    rows = {}
    for batch in profile.batches:
        ms = engine.measure_step(batch, context=profile.mean_context, steps=profile.steps)
        floor = 1000.0 * fp16_bytes(batch) / bandwidth
        own = 1000.0 * engine.step_bytes(batch, profile.mean_context) / bandwidth
        rows[str(batch)] = {"ms_per_step": round(ms, 3), "fp16_floor_ms": round(floor, 3),
                            "x_fp16_floor": round(ms / floor, 3), "own_floor_ms": round(own, 3),
                            "x_own_floor": round(ms / own, 3),
                            "tokens_per_s": round(batch * 1000.0 / ms, 1)}
    return rows


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p90 / p99 / max, seconds."""
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 4)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 4)}


def throughput(engine: DecodeEngine, profile: Profile) -> dict[str, Any]:
    """``studies`` LLaVA-Rad-shaped requests submitted at once, 256 tokens forced."""
    prompts = profile.prompts(profile.studies, seed=7)
    engine.stats = EngineStats()
    started = time.perf_counter()
    outputs = engine.generate([DecodeRequest(p, profile.new_tokens) for p in prompts])
    wall = time.perf_counter() - started
    per_token = [(o.total_s - o.first_token_s) / max(1, len(o.token_ids) - 1) for o in outputs]
    stats = engine.stats
    return {
        "studies": profile.studies, "seconds": round(wall, 2),
        "studies_per_hour": round(3600 * profile.studies / wall),
        "mean_batch": round(stats.mean_batch(), 1),
        "mean_batch_while_queued": round(stats.mean_batch_while_queued(), 1),
        "slot_occupancy_while_queued": round(stats.mean_batch_while_queued()
                                             / engine.max_batch, 3),
        "slot_occupancy": round(stats.mean_batch() / engine.max_batch, 3),
        "time_to_first_token_s": percentiles([o.first_token_s for o in outputs]),
        "latency_s": percentiles([o.total_s for o in outputs]),
        "time_per_output_token_s": percentiles(per_token),
        "prefill_chunks": stats.prefill_chunks,
        "tokens": sum(len(o.token_ids) for o in outputs),
    }


# -- 5. transformers ------------------------------------------------------------------------


def transformers_rows(model: Any, profile: Profile, report: Report,
                      fp16_bytes: Callable[[int], int], bandwidth: float) -> dict[str, Any]:
    """transformers' generate ms per step (static cache at every batch, default at 1)."""
    rows: dict[str, Any] = {}
    plan = [("default", profile.batches[0])]
    if profile.device == "cuda":  # the static cache is compiled: minutes on a CPU
        plan += [("static", b) for b in profile.batches]
    for cache, batch in plan:
        key = f"{cache}_{batch}"
        if time.monotonic() > report.deadline:
            rows[key] = {"skipped": "time budget spent"}
            continue
        try:
            embeds = torch.stack(profile.prompts(batch))
            timing = hf_generate_timing(model, embeds, min(32, profile.new_tokens),
                                        cache=None if cache == "default" else cache)
            timing["x_fp16_floor"] = timing["ms_per_step"] / (1000.0 * fp16_bytes(batch)
                                                              / bandwidth)
            rows[key] = {k: round(v, 3) for k, v in timing.items()}
        except Exception as exc:  # noqa: BLE001 - a failing configuration is a result
            rows[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


# -- the run --------------------------------------------------------------------------------


def run(profile: Profile, out: Path, budget_s: float, bundle: Path | None) -> dict[str, Any]:
    """Every section in order; returns the report's data."""
    report = Report(out, time.monotonic() + budget_s)
    device = profile.device
    info: dict[str, Any] = {"device": device, "torch": torch.__version__,
                            "dry_run": device == "cpu"}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gib=round(props.total_memory / GIB, 1),
                    cuda=torch.version.cuda)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    report.put("device", info)
    bandwidth = copy_bandwidth(device, 2.0 if device == "cuda" else 0.05)
    report.put("copy_bandwidth_tb_s", round(bandwidth / 1e12, 4))
    report.section("kernels", lambda: checked_kernels(profile, out))
    report.section("parity_small_fp32", lambda: parity_small(profile))

    log("building the model (random weights)")
    model = profile.model(profile.config, profile.dtype)
    parity_prompts = profile.prompts(profile.parity_prompts, seed=3)
    accuracy_prompts = profile.prompts(profile.accuracy_requests, seed=11)
    fp16_engine_bytes: dict[int, int] = {}

    def fp16_bytes(batch: int) -> int:
        return fp16_engine_bytes[batch]

    reference_tokens: list[list[int]] = []
    reference_weights = None
    for name in CONFIGURATIONS:
        def configuration(name: str = name) -> dict[str, Any]:
            nonlocal reference_weights
            engine = engine_for(model, profile, name)
            try:
                if not fp16_engine_bytes:
                    fp16_engine_bytes.update({b: engine.step_bytes(b, profile.mean_context)
                                              for b in profile.batches})
                result: dict[str, Any] = {"engine": engine.describe()}
                result["steps"] = step_rows(engine, profile, bandwidth, fp16_bytes)
                if name != "fp8":
                    result["parity_7b_shape"] = compare_greedy(
                        model, engine, parity_prompts, profile.parity_tokens, eos=None)
                if name == "varlen_chunked":
                    reference_tokens.extend(generate_greedy(
                        engine, accuracy_prompts, profile.accuracy_tokens, None))
                    reference_weights = engine.weights
                if name == "fp8" and reference_tokens and reference_weights is not None:
                    tokens = generate_greedy(engine, accuracy_prompts, profile.accuracy_tokens,
                                             None)
                    scored = profile.logit_requests
                    report.put("fp8_accuracy_7b", {
                        "requests": len(tokens), "new_tokens": profile.accuracy_tokens,
                        "greedy": greedy_agreement(reference_tokens, tokens),
                        "logits": logit_error(reference_weights, engine.weights,
                                              accuracy_prompts[:scored],
                                              reference_tokens[:scored],
                                              candidate_kv="fp8"),
                        "note": "random weights: near-uniform logits make greedy choices "
                                "near-ties; see fp8_accuracy_demo / fp8_accuracy_bundle",
                    })
                result["throughput"] = throughput(engine, profile)
                return result
            finally:
                engine.close()
        report.section(name, configuration)

    def demo_accuracy() -> dict[str, Any]:
        demo_model, tokenizer, prompts, eos = demo_bundle_prompts(
            DEMO_BUNDLE, profile.demo_requests, device=device)
        return compare_configurations(demo_model, prompts, profile.demo_tokens, eos=eos,
                                      tokenizer=tokenizer, max_batch=16,
                                      candidate={"fp8": True, "kv_cache": "fp8"},
                                      attention="varlen", logit_requests=8)
    if DEMO_BUNDLE.joinpath("manifest.json").is_file():
        report.section("fp8_accuracy_demo", demo_accuracy)
    else:
        report.put("fp8_accuracy_demo", {"skipped": f"no demo bundle at {DEMO_BUNDLE}"})

    if bundle is not None:
        def bundle_accuracy() -> dict[str, Any]:
            real_model, tokenizer, prompts, eos = demo_bundle_prompts(
                bundle, profile.demo_requests, device=device)
            return compare_configurations(real_model, prompts, profile.accuracy_tokens, eos=eos,
                                          tokenizer=tokenizer, max_batch=profile.max_batch,
                                          candidate={"fp8": True, "kv_cache": "fp8"},
                                          attention="varlen", logit_requests=8)
        report.section("fp8_accuracy_bundle", bundle_accuracy)

    def hf() -> dict[str, Any]:
        if not fp16_engine_bytes:
            raise RuntimeError("no engine was built")
        return transformers_rows(model, profile, report, fp16_bytes, bandwidth)
    report.section("transformers", hf)
    out.with_suffix(".md").write_text(summary(report.data))
    return report.data


def summary(data: dict[str, Any]) -> str:
    """A Markdown digest of the figures (the JSON holds everything)."""
    lines = ["# Decode engine GPU checks", "",
             f"Device: {data.get('device')}; copy bandwidth "
             f"{data.get('copy_bandwidth_tb_s')} TB/s", ""]
    lines += ["| configuration | batch | ms/step | × fp16 floor | × own floor |",
              "|---|---:|---:|---:|---:|"]
    for name in CONFIGURATIONS:
        steps = (data.get(name) or {}).get("steps") or {}
        for batch, row in steps.items():
            lines.append(f"| {name} | {batch} | {row['ms_per_step']} | {row['x_fp16_floor']} "
                         f"| {row['x_own_floor']} |")
    lines += ["", "| configuration | studies/h | occupancy while queued | TTFT p50/p99 s "
              "| latency p50/p99 s | s/token p50/p99 |", "|---|---:|---:|---|---|---|"]
    for name in CONFIGURATIONS:
        t = (data.get(name) or {}).get("throughput")
        if t:
            lines.append(
                f"| {name} | {t['studies_per_hour']} | {t['slot_occupancy_while_queued']} | "
                f"{t['time_to_first_token_s']['p50']} / {t['time_to_first_token_s']['p99']} | "
                f"{t['latency_s']['p50']} / {t['latency_s']['p99']} | "
                f"{t['time_per_output_token_s']['p50']} / {t['time_per_output_token_s']['p99']} |")
    for key in ("fp8_accuracy_7b", "fp8_accuracy_demo", "fp8_accuracy_bundle", "kernels",
                "parity_small_fp32", "transformers"):
        if key in data:
            lines += ["", f"## {key}", "", "```", json.dumps(data[key], indent=1, default=str),
                      "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_checks.json"))
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny shapes on the CPU (what the test suite runs)")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="sections starting after this many seconds are skipped")
    parser.add_argument("--studies", type=int, default=192)
    parser.add_argument("--accuracy-requests", type=int, default=64)
    parser.add_argument("--accuracy-tokens", type=int, default=256)
    parser.add_argument("--chunk-tokens", type=int, default=4096,
                        help="chunked prefill: token budget per engine step")
    parser.add_argument("--stop-check", type=int, default=8)
    parser.add_argument("--kernels-only", action="store_true",
                        help="only the kernel checks (run as a child of the full run)")
    parser.add_argument("--bundle", type=Path, default=None,
                        help="an imported bundle (e.g. LLaVA-Rad) for fp8 accuracy with real "
                             "weights")
    args = parser.parse_args(argv)
    if args.dry_run:
        profile = Profile.dry_run()
    elif torch.cuda.is_available():
        profile = Profile.gpu(args)
    else:
        parser.error("no CUDA device: use --dry-run")
    if args.kernels_only:
        args.out.write_text(json.dumps(kernel_checks(profile), indent=2))
        return 0
    started = time.monotonic()
    data = run(profile, args.out, args.budget_s, args.bundle)
    failed = [key for key, value in data.items()
              if isinstance(value, dict) and "error" in value]
    log(f"done in {time.monotonic() - started:.0f} s; sections with errors: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
