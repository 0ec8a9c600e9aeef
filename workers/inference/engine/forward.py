"""The decoder's forward passes over a static KV cache: prefill of one sequence, decode of many.

Both follow the Hugging Face LLaMA modules operation for operation (RMSNorm in float32,
rotary tables computed the same way, SiLU-gated MLP, logits in float32), so greedy decoding
through the engine picks the same tokens as ``model.generate``. The element-wise pieces
(:class:`LayerKernels`) can be compiled into fused kernels on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from workers.inference.engine import triton_attention
from workers.inference.engine.fp8 import FP8_DTYPE, Fp8Matrix, dequantize, fp8_linear, quantize_rows
from workers.inference.engine.weights import DecoderShape, DecoderWeights, Matrix

AttentionKind = Literal["sdpa", "matmul", "varlen"]
"""Decode attention: ``"sdpa"``/``"matmul"`` read the whole cache with a mask; ``"varlen"``
reads each sequence's own length (a Triton kernel on a GPU, the reference path elsewhere)."""
KVCacheKind = Literal["auto", "fp8"]
"""``"auto"``: keys and values in the model's dtype; ``"fp8"``: E4M3 with per-vector scales."""


def linear(x: torch.Tensor, weight: Matrix) -> torch.Tensor:
    """``x @ weightᵀ`` for a plain or an fp8 weight matrix.

    fp8 products run on the fp8 tensor cores where the device has them (CUDA), else on the
    reference path (same fp8 operands, float32 products).
    """
    if isinstance(weight, Fp8Matrix):
        return fp8_linear(x, weight, use_scaled_mm=x.device.type == "cuda")
    return F.linear(x, weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LLaMA RMSNorm: normalise in float32, cast back, then scale."""
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add followed by RMSNorm; returns ``(x + delta, norm(x + delta))``."""
    summed = x + delta
    return summed, rms_norm(summed, weight, eps)


def rotate(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of (tokens, heads, head_dim) queries and keys.

    ``cos``/``sin`` are (tokens, head_dim) in the activations' dtype.
    """
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    half = q.shape[-1] // 2

    def turn(t: torch.Tensor) -> torch.Tensor:
        return torch.cat((-t[..., half:], t[..., :half]), dim=-1)

    return q * cos + turn(q) * sin, k * cos + turn(k) * sin


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU: ``silu(gate) * up`` of the fused gate/up projection output."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@dataclass(frozen=True)
class LayerKernels:
    """The element-wise parts of a layer, plain or compiled.

    Attributes
    ----------
    rms_norm, add_rms_norm, rotate, silu_mul
        Callables with the signatures of the module-level functions.
    compiled
        Whether they were compiled (fused into single kernels) with ``torch.compile``.
    """

    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    add_rms_norm: Callable[
        [torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]
    ]
    rotate: Callable[
        [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
    ]
    silu_mul: Callable[[torch.Tensor], torch.Tensor]
    compiled: bool = False

    @classmethod
    def plain(cls) -> LayerKernels:
        """Eager PyTorch operations (every device)."""
        return cls(rms_norm, add_rms_norm, rotate, silu_mul, compiled=False)

    @classmethod
    def fused(cls) -> LayerKernels:
        """Each piece compiled into one kernel with ``torch.compile`` (GPU)."""
        def make(fn: Callable[..., object]) -> Any:
            return torch.compile(fn, dynamic=False, fullgraph=True)

        return cls(make(rms_norm), make(add_rms_norm), make(rotate), make(silu_mul),
                   compiled=True)


class StaticKVCache:
    """Preallocated keys and values: (layers, slots, kv_heads, capacity, head_dim) each.

    ``capacity`` is ``max_len + 1``: the last position is a scratch row that slots without a
    running sequence (free, or still being prefilled) write their step's keys to, so a decode
    step never touches the prompt of a sequence being prefilled in chunks.

    Parameters
    ----------
    shape
        Decoder dimensions.
    slots, max_len
        Sequences held at once and the longest sequence (prompt + generated).
    dtype, device
        Activation dtype and device.
    kind
        ``"auto"`` stores ``dtype``; ``"fp8"`` stores E4M3 and one float32 scale per (layer,
        slot, head, position) for keys and for values.
    """

    def __init__(self, shape: DecoderShape, slots: int, max_len: int, *,
                 dtype: torch.dtype, device: torch.device, kind: KVCacheKind = "auto") -> None:
        capacity = max_len + 1
        size = (shape.num_layers, slots, shape.num_kv_heads, capacity, shape.head_dim)
        self.kind: KVCacheKind = kind
        self.dtype = dtype
        storage = FP8_DTYPE if kind == "fp8" else dtype
        self.keys = torch.zeros(size, dtype=storage, device=device)
        self.values = torch.zeros(size, dtype=storage, device=device)
        self.key_scales: torch.Tensor | None = None
        self.value_scales: torch.Tensor | None = None
        if kind == "fp8":
            self.key_scales = torch.zeros(size[:-1], dtype=torch.float32, device=device)
            self.value_scales = torch.zeros(size[:-1], dtype=torch.float32, device=device)
        self.slots = slots
        self.max_len = max_len
        self.capacity = capacity
        self.scratch = max_len
        self._nbytes = self._count_bytes()
        self._bytes_per_token = self._nbytes // (slots * capacity)

    @property
    def fp8(self) -> bool:
        """Whether keys and values are stored in E4M3."""
        return self.kind == "fp8"

    def _count_bytes(self) -> int:
        total = self.keys.nbytes + self.values.nbytes
        for scales in (self.key_scales, self.value_scales):
            if scales is not None:
                total += scales.nbytes
        return total

    def nbytes(self) -> int:
        """Bytes the cache was allocated with (scales included)."""
        return self._nbytes

    def bytes_per_token(self) -> int:
        """Bytes one cached position occupies across all layers (keys, values, scales)."""
        return self._bytes_per_token

    def write_tokens(self, layer: int, slot_index: torch.Tensor, positions: torch.Tensor,
                     k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one (n, kv_heads, head_dim) key and value per slot at its position."""
        if self.fp8:
            assert self.key_scales is not None and self.value_scales is not None
            kq, ks = quantize_rows(k)
            vq, vs = quantize_rows(v)
            self.keys[layer][slot_index, :, positions] = kq
            self.values[layer][slot_index, :, positions] = vq
            self.key_scales[layer][slot_index, :, positions] = ks[..., 0]
            self.value_scales[layer][slot_index, :, positions] = vs[..., 0]
            return
        self.keys[layer][slot_index, :, positions] = k
        self.values[layer][slot_index, :, positions] = v

    def write_range(self, layer: int, slot: int, start: int, k: torch.Tensor,
                    v: torch.Tensor) -> None:
        """Store (kv_heads, c, head_dim) keys and values at positions ``[start, start + c)``."""
        end = start + int(k.shape[1])
        if self.fp8:
            assert self.key_scales is not None and self.value_scales is not None
            kq, ks = quantize_rows(k)
            vq, vs = quantize_rows(v)
            self.keys[layer, slot, :, start:end] = kq
            self.values[layer, slot, :, start:end] = vq
            self.key_scales[layer, slot, :, start:end] = ks[..., 0]
            self.value_scales[layer, slot, :, start:end] = vs[..., 0]
            return
        self.keys[layer, slot, :, start:end] = k
        self.values[layer, slot, :, start:end] = v

    def read_range(self, layer: int, slot: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of positions ``[0, end)`` of one slot: (kv_heads, end, head_dim)."""
        keys = self.keys[layer, slot, :, :end]
        values = self.values[layer, slot, :, :end]
        if self.fp8:
            assert self.key_scales is not None and self.value_scales is not None
            keys = dequantize(keys, self.key_scales[layer, slot, :, :end, None], self.dtype)
            values = dequantize(values, self.value_scales[layer, slot, :, :end, None], self.dtype)
        return keys, values

    def read_slots(self, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the first ``n`` slots: (n, kv_heads, capacity, head_dim)."""
        keys, values = self.keys[layer, :n], self.values[layer, :n]
        if self.fp8:
            assert self.key_scales is not None and self.value_scales is not None
            keys = dequantize(keys, self.key_scales[layer, :n, ..., None], self.dtype)
            values = dequantize(values, self.value_scales[layer, :n, ..., None], self.dtype)
        return keys, values

    def release(self) -> None:
        """Give the cache's memory back (the engine is closed)."""
        self.keys = self.keys.new_empty(0)
        self.values = self.values.new_empty(0)
        self.key_scales = None if self.key_scales is None else self.key_scales.new_empty(0)
        self.value_scales = None if self.value_scales is None else self.value_scales.new_empty(0)


class RotaryTables:
    """cos/sin of every position up to ``max_len`` (as the model's rotary module computes them)."""

    def __init__(self, weights: DecoderWeights, max_len: int) -> None:
        positions = torch.arange(max_len, device=weights.device, dtype=torch.float32)
        freqs = positions[:, None] * weights.inv_freq.to(weights.device)[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        self.cos = (angles.cos() * weights.rope_scale).to(weights.dtype)
        self.sin = (angles.sin() * weights.rope_scale).to(weights.dtype)


def _rotated_qkv(shape: DecoderShape, kernels: LayerKernels, qkv_weight: Matrix,
                 h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's queries, keys and values of (tokens, hidden) ``h``, rotary applied to q, k.

    Returns (tokens, heads, head_dim) queries and (tokens, kv_heads, head_dim) keys and values.
    """
    tokens = int(h.shape[0])
    qkv = linear(h, qkv_weight)
    q, k, v = torch.split(qkv, [shape.q_width, shape.kv_width, shape.kv_width], dim=-1)
    q = q.view(tokens, shape.num_heads, shape.head_dim)
    k = k.view(tokens, shape.num_kv_heads, shape.head_dim)
    v = v.view(tokens, shape.num_kv_heads, shape.head_dim)
    q, k = kernels.rotate(q, k, cos, sin)
    return q, k, v


def _mlp(weights: DecoderWeights, kernels: LayerKernels, index: int, x: torch.Tensor,
         h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``index``'s MLP added to the residual ``x``, then the next layer's (or final) norm."""
    shape = weights.shape
    layer = weights.layers[index]
    mlp = linear(kernels.silu_mul(linear(h, layer.gate_up)), layer.down)
    following = weights.layers[index + 1].input_norm if index + 1 < shape.num_layers \
        else weights.final_norm
    return kernels.add_rms_norm(x, mlp, following, shape.rms_eps)


def prefill(
    weights: DecoderWeights,
    kernels: LayerKernels,
    cache: StaticKVCache,
    rotary: RotaryTables,
    slot: int,
    embeds: torch.Tensor,
) -> torch.Tensor:
    """Run a whole prompt of one sequence and fill its cache slot.

    Parameters
    ----------
    weights, kernels, cache, rotary
        Engine state.
    slot
        Cache slot the sequence occupies.
    embeds
        (T, hidden) input embeddings (image embeddings already spliced in).

    Returns
    -------
    torch.Tensor
        float32 (vocab,) logits of the last position.
    """
    return prefill_chunk(weights, kernels, cache, rotary, slot, embeds, start=0)


def prefill_chunk(
    weights: DecoderWeights,
    kernels: LayerKernels,
    cache: StaticKVCache,
    rotary: RotaryTables,
    slot: int,
    embeds: torch.Tensor,
    *,
    start: int,
    all_logits: bool = False,
) -> torch.Tensor:
    """Run prompt positions ``[start, start + c)`` of one sequence whose earlier positions are
    already in its cache slot, and store theirs.

    The chunk's queries attend causally to the cached positions before it and to each other.
    A whole prompt (``start == 0``) in a cache of the model's dtype attends to its fresh keys
    and values with the causal kernel, exactly as a one-piece prefill always has.

    Parameters
    ----------
    weights, kernels, cache, rotary
        Engine state.
    slot
        Cache slot the sequence occupies.
    embeds
        (c, hidden) input embeddings of the chunk.
    start
        Position of the chunk's first token.
    all_logits
        Return the logits of every position of the chunk (teacher-forced scoring).

    Returns
    -------
    torch.Tensor
        float32 (vocab,) logits of the chunk's last position, or (c, vocab) of every one.
    """
    shape = weights.shape
    length = int(embeds.shape[0])
    end = start + length
    if end > cache.max_len:
        raise ValueError(f"positions up to {end} exceed the {cache.max_len}-token cache")
    eps = shape.rms_eps
    cos, sin = rotary.cos[start:end], rotary.sin[start:end]
    gqa = shape.num_heads != shape.num_kv_heads
    fresh = start == 0 and not cache.fp8
    mask = None
    if not fresh:
        rows = torch.arange(start, end, device=embeds.device)[:, None]
        mask = torch.arange(end, device=embeds.device)[None, :] <= rows
    x = embeds.to(dtype=weights.dtype)
    h = kernels.rms_norm(x, weights.layers[0].input_norm, eps)
    for index, layer in enumerate(weights.layers):
        q, k, v = _rotated_qkv(shape, kernels, layer.qkv, h, cos, sin)
        keys, values = k.transpose(0, 1), v.transpose(0, 1)
        cache.write_range(index, slot, start, keys, values)
        if fresh:
            attended = F.scaled_dot_product_attention(
                q.transpose(0, 1)[None], keys[None], values[None], is_causal=True,
                enable_gqa=gqa)[0]
        else:
            cached_keys, cached_values = cache.read_range(index, slot, end)
            attended = F.scaled_dot_product_attention(
                q.transpose(0, 1)[None], cached_keys[None], cached_values[None],
                attn_mask=mask, enable_gqa=gqa)[0]
        attended = attended.transpose(0, 1).reshape(length, shape.q_width)
        x, h = kernels.add_rms_norm(x, linear(attended, layer.out), layer.post_norm, eps)
        x, h = _mlp(weights, kernels, index, x, h)
    if all_logits:
        return F.linear(h, weights.lm_head).to(torch.float32)
    return F.linear(h[-1:], weights.lm_head)[0].to(torch.float32)


@dataclass(frozen=True)
class DecodeInputs:
    """Device tensors one decode step reads (views of the engine's slot table).

    Attributes
    ----------
    tokens, positions
        (n,) input token of each slot and the position it goes to.
    slot_index
        (n,) ``arange(n)``.
    key_index
        (capacity,) ``arange(capacity)``.
    lengths
        (n,) positions each slot attends to (``positions + 1`` for a running sequence, 1 for
        a slot without one); read by ``"varlen"`` attention.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    slot_index: torch.Tensor
    key_index: torch.Tensor
    lengths: torch.Tensor | None = None


def decode(
    weights: DecoderWeights,
    kernels: LayerKernels,
    cache: StaticKVCache,
    rotary: RotaryTables,
    inputs: DecodeInputs,
    attention: AttentionKind = "sdpa",
) -> torch.Tensor:
    """One decode step for the first ``n`` slots of the cache.

    No host synchronisation, except ``"varlen"`` attention off a GPU (the reference path
    reads the lengths on the host).

    Returns
    -------
    torch.Tensor
        float32 (n, vocab) logits.
    """
    shape = weights.shape
    n = int(inputs.tokens.shape[0])
    eps = shape.rms_eps
    group = shape.num_heads // shape.num_kv_heads
    positions = inputs.positions
    cos, sin = rotary.cos[positions], rotary.sin[positions]
    visible = None
    lengths = inputs.lengths if inputs.lengths is not None else positions + 1
    use_kernel = attention == "varlen" and triton_attention.available(positions.device)
    host_lengths: list[int] = []
    if attention != "varlen":
        visible = (inputs.key_index[None, :] <= positions[:, None])[:, None, None, :]
    elif not use_kernel:
        host_lengths = [int(length) for length in lengths.tolist()]
    x = F.embedding(inputs.tokens, weights.embed)
    h = kernels.rms_norm(x, weights.layers[0].input_norm, eps)
    for index, layer in enumerate(weights.layers):
        q, k, v = _rotated_qkv(shape, kernels, layer.qkv, h, cos, sin)
        cache.write_tokens(index, inputs.slot_index, positions, k, v)
        grouped = q.view(n, shape.num_kv_heads, group, shape.head_dim)
        if use_kernel:
            attended = triton_attention.attend_varlen_triton(
                grouped, cache.keys[index], cache.values[index], lengths,
                None if cache.key_scales is None else cache.key_scales[index],
                None if cache.value_scales is None else cache.value_scales[index])
        elif attention == "varlen":
            attended = attend_varlen_reference(grouped, cache, index, host_lengths)
        else:
            assert visible is not None
            layer_keys, layer_values = cache.read_slots(index, n)
            attended = _attend(grouped, layer_keys, layer_values, visible, attention)
        x, h = kernels.add_rms_norm(
            x, linear(attended.reshape(n, shape.q_width), layer.out), layer.post_norm, eps
        )
        x, h = _mlp(weights, kernels, index, x, h)
    return F.linear(h, weights.lm_head).to(torch.float32)


def attend_varlen_reference(q: torch.Tensor, cache: StaticKVCache, layer: int,
                            lengths: list[int]) -> torch.Tensor:
    """Attention of each slot's (kv_heads, group, d) queries over its own first ``lengths[i]``
    cached positions only (the PyTorch reference of the Triton kernel; every device).

    Returns
    -------
    torch.Tensor
        (n, kv_heads, group, head_dim).
    """
    rows = []
    for slot, length in enumerate(lengths):
        keys, values = cache.read_range(layer, slot, length)
        rows.append(F.scaled_dot_product_attention(q[slot], keys, values))
    return torch.stack(rows)


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
            attention: AttentionKind) -> torch.Tensor:
    """Attention of (n, kv_heads, group, d) queries over (n, kv_heads, capacity, d) keys."""
    if attention == "sdpa":
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
    scores = torch.matmul(q, keys.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    scores = scores.masked_fill(~visible, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, values)


__all__ = [
    "AttentionKind",
    "DecodeInputs",
    "KVCacheKind",
    "LayerKernels",
    "RotaryTables",
    "StaticKVCache",
    "add_rms_norm",
    "attend_varlen_reference",
    "decode",
    "linear",
    "prefill",
    "prefill_chunk",
    "rms_norm",
    "rotate",
    "silu_mul",
]
