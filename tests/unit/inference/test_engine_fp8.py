"""fp8 (E4M3) quantisation of weights and KV cache: round trips, products, byte accounting."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from workers.inference.engine import DecodeEngine
from workers.inference.engine.forward import StaticKVCache
from workers.inference.engine.fp8 import (
    FP8_DTYPE,
    FP8_MAX,
    FP8_MIN_NORMAL,
    Fp8Matrix,
    absolute_error_bound,
    dequantize,
    fp8_linear_reference,
    fp8_linear_scaled_mm,
    quantize_rows,
    relative_error_bound,
)
from workers.inference.engine.weights import DecoderShape

REPO_ROOT = Path(__file__).resolve().parents[3]


def _rows(seed: int = 0) -> torch.Tensor:
    """Rows of very different magnitudes, with outliers and exact zeros."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 256, generator=generator)
    x *= torch.logspace(-4, 4, 64)[:, None]
    x[3, 17] *= 50.0
    x[5, :100] = 0.0
    return x


def test_round_trip_error_is_within_half_a_unit_of_three_mantissa_bits() -> None:
    x = _rows()
    q, scale = quantize_rows(x)
    assert q.dtype == FP8_DTYPE and scale.shape == (64, 1)
    back = dequantize(q, scale)
    error = (back - x).abs()
    # Normal range: |error| <= |x| * 2^-4; subnormals: half the spacing 2^-9, times the scale.
    bound = torch.maximum(x.abs() * relative_error_bound(), scale * 2.0**-10)
    assert bool((error <= bound * (1 + 1e-5) + 1e-30).all())
    assert bool((error <= absolute_error_bound(scale)).all())
    normal = (x.abs() / scale) >= FP8_MIN_NORMAL
    worst = float((error[normal] / x.abs()[normal]).max())
    assert 2.0**-6 < worst <= 2.0**-4 * (1 + 1e-5), "3 mantissa bits, not more, not fewer"
    # Each row's largest magnitude maps to E4M3's largest value and comes back exactly.
    assert torch.equal(q.to(torch.float32).abs().amax(dim=-1), torch.full((64,), FP8_MAX))
    peak = x.abs().argmax(dim=-1, keepdim=True)
    assert torch.allclose(back.gather(-1, peak), x.gather(-1, peak), rtol=1e-6, atol=0)
    assert torch.equal(back[5, :100], torch.zeros(100))


def test_zero_rows_and_extreme_values_stay_finite() -> None:
    x = torch.zeros(3, 32)
    x[1] = 1e-30
    x[2, 0] = 3e38
    q, scale = quantize_rows(x)
    back = dequantize(q, scale)
    assert bool(torch.isfinite(back).all()) and bool((scale > 0).all())
    assert torch.equal(back[0], torch.zeros(32))
    assert back[2, 0] == pytest.approx(3e38, rel=1e-6)


def test_fp8_products_agree_on_both_paths_and_stay_close_to_float32() -> None:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(96, 128, generator=generator) * 0.05
    x = torch.randn(5, 128, generator=generator)
    matrix = Fp8Matrix.from_weight(weight)
    assert matrix.values.dtype == FP8_DTYPE and matrix.out_dtype == torch.float32
    assert matrix.nbytes == 96 * 128 + 96 * 4
    reference = fp8_linear_reference(x, matrix)
    tensor_core = fp8_linear_scaled_mm(x, matrix)
    assert torch.allclose(tensor_core, reference, rtol=1e-5, atol=1e-5)
    exact = x @ weight.T
    relative = float((reference - exact).norm() / exact.norm())
    # Two operands each within 2^-4 per element, errors independent: a few percent at most.
    assert 1e-3 < relative < 2 * relative_error_bound()


def test_fp8_kv_cache_round_trip_and_scratch_row() -> None:
    shape = DecoderShape(num_layers=2, hidden=64, intermediate=128, vocab=50, num_heads=4,
                         num_kv_heads=2, head_dim=16, rms_eps=1e-5, max_positions=64)
    cache = StaticKVCache(shape, 3, 40, dtype=torch.float32, device=torch.device("cpu"),
                          kind="fp8")
    assert cache.keys.dtype == FP8_DTYPE and cache.capacity == 41 and cache.scratch == 40
    generator = torch.Generator().manual_seed(2)
    k = torch.randn(2, 25, 16, generator=generator) * 3
    v = torch.randn(2, 25, 16, generator=generator) * 0.01
    cache.write_range(1, 2, 5, k, v)
    keys, values = cache.read_range(1, 2, 30)
    for got, want in ((keys[:, 5:30], k), (values[:, 5:30], v)):
        scale = want.abs().amax(dim=-1, keepdim=True) / FP8_MAX
        assert bool(((got - want).abs() <= absolute_error_bound(scale)).all())
        assert float((got - want).abs().max()) > 0
    token_k = torch.randn(3, 2, 16, generator=generator)
    cache.write_tokens(0, torch.arange(3), torch.tensor([0, 40, 7]), token_k, token_k)
    keys, _ = cache.read_slots(0, 3)
    assert torch.allclose(keys[1, :, 40], token_k[1], rtol=2.0**-4, atol=1e-3)
    # Bytes: one E4M3 byte per element plus a float32 scale per 16-element vector.
    per_token = 2 * shape.num_layers * shape.kv_width * (1 + 4 / shape.head_dim)
    assert cache.bytes_per_token() == per_token
    assert cache.nbytes() == per_token * 3 * 41


def test_a_7b_decode_step_reads_about_half_the_bytes_with_fp8() -> None:
    """Byte accounting from the tensors of a Vicuna-7B-shaped engine (built on the meta
    device: shapes and dtypes, no memory)."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from decode import random_model, vicuna_config

    model = random_model(vicuna_config(), torch.float16, "meta")
    fp16 = DecodeEngine(model, max_batch=64, max_seq_len=1701, max_new_tokens=256)
    fp8 = DecodeEngine(model, max_batch=64, max_seq_len=1701, max_new_tokens=256, fp8=True,
                       kv_cache="fp8")
    assert fp16.weights.nbytes() == pytest.approx(13.21e9, rel=1e-3)
    assert fp16.cache.bytes_per_token() == 512 * 1024
    for batch in (1, 8, 32, 64):
        ratio = fp8.step_bytes(batch, 1557) / fp16.step_bytes(batch, 1557)
        assert 0.5 < ratio < 0.52, (batch, ratio)
    described = fp8.describe()
    assert described["fp8_weights"] and described["kv_cache"] == "fp8"
    assert not fp16.describe()["fp8_weights"]
