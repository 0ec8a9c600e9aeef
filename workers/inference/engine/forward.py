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

from workers.inference.engine.weights import DecoderShape, DecoderWeights

AttentionKind = Literal["sdpa", "matmul"]


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
    """Preallocated keys and values: (layers, slots, kv_heads, max_len, head_dim) each.

    Parameters
    ----------
    shape
        Decoder dimensions.
    slots, max_len
        Sequences held at once and the longest sequence (prompt + generated).
    dtype, device
        Storage dtype and device.
    """

    def __init__(self, shape: DecoderShape, slots: int, max_len: int, *,
                 dtype: torch.dtype, device: torch.device) -> None:
        size = (shape.num_layers, slots, shape.num_kv_heads, max_len, shape.head_dim)
        self.keys = torch.zeros(size, dtype=dtype, device=device)
        self.values = torch.zeros(size, dtype=dtype, device=device)
        self.slots = slots
        self.max_len = max_len

    def nbytes(self) -> int:
        """Bytes held by the cache."""
        return self.keys.nbytes + self.values.nbytes

    def release(self) -> None:
        """Give the cache's memory back (the engine is closed)."""
        self.keys = self.keys.new_empty(0)
        self.values = self.values.new_empty(0)


class RotaryTables:
    """cos/sin of every position up to ``max_len`` (as the model's rotary module computes them)."""

    def __init__(self, weights: DecoderWeights, max_len: int) -> None:
        positions = torch.arange(max_len, device=weights.device, dtype=torch.float32)
        freqs = positions[:, None] * weights.inv_freq.to(weights.device)[None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        self.cos = (angles.cos() * weights.rope_scale).to(weights.dtype)
        self.sin = (angles.sin() * weights.rope_scale).to(weights.dtype)


def _rotated_qkv(shape: DecoderShape, kernels: LayerKernels, qkv_weight: torch.Tensor,
                 h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's queries, keys and values of (tokens, hidden) ``h``, rotary applied to q, k.

    Returns (tokens, heads, head_dim) queries and (tokens, kv_heads, head_dim) keys and values.
    """
    tokens = int(h.shape[0])
    qkv = F.linear(h, qkv_weight)
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
    mlp = F.linear(kernels.silu_mul(F.linear(h, layer.gate_up)), layer.down)
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
    shape = weights.shape
    length = int(embeds.shape[0])
    eps = shape.rms_eps
    cos, sin = rotary.cos[:length], rotary.sin[:length]
    gqa = shape.num_heads != shape.num_kv_heads
    x = embeds.to(dtype=weights.dtype)
    h = kernels.rms_norm(x, weights.layers[0].input_norm, eps)
    for index, layer in enumerate(weights.layers):
        q, k, v = _rotated_qkv(shape, kernels, layer.qkv, h, cos, sin)
        keys, values = k.transpose(0, 1), v.transpose(0, 1)
        cache.keys[index, slot, :, :length] = keys
        cache.values[index, slot, :, :length] = values
        attended = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], keys[None], values[None], is_causal=True, enable_gqa=gqa
        )[0]
        attended = attended.transpose(0, 1).reshape(length, shape.q_width)
        x, h = kernels.add_rms_norm(x, F.linear(attended, layer.out), layer.post_norm, eps)
        x, h = _mlp(weights, kernels, index, x, h)
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
        (max_len,) ``arange(max_len)``.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    slot_index: torch.Tensor
    key_index: torch.Tensor


def decode(
    weights: DecoderWeights,
    kernels: LayerKernels,
    cache: StaticKVCache,
    rotary: RotaryTables,
    inputs: DecodeInputs,
    attention: AttentionKind = "sdpa",
) -> torch.Tensor:
    """One decode step for the first ``n`` slots of the cache (no host synchronisation).

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
    visible = (inputs.key_index[None, :] <= positions[:, None])[:, None, None, :]
    x = F.embedding(inputs.tokens, weights.embed)
    h = kernels.rms_norm(x, weights.layers[0].input_norm, eps)
    for index, layer in enumerate(weights.layers):
        q, k, v = _rotated_qkv(shape, kernels, layer.qkv, h, cos, sin)
        layer_keys, layer_values = cache.keys[index], cache.values[index]
        layer_keys[inputs.slot_index, :, positions] = k
        layer_values[inputs.slot_index, :, positions] = v
        grouped = q.view(n, shape.num_kv_heads, group, shape.head_dim)
        attended = _attend(grouped, layer_keys[:n], layer_values[:n], visible, attention)
        x, h = kernels.add_rms_norm(
            x, F.linear(attended.reshape(n, shape.q_width), layer.out), layer.post_norm, eps
        )
        x, h = _mlp(weights, kernels, index, x, h)
    return F.linear(h, weights.lm_head).to(torch.float32)


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor,
            attention: AttentionKind) -> torch.Tensor:
    """Attention of (n, kv_heads, group, d) queries over (n, kv_heads, max_len, d) keys."""
    if attention == "sdpa":
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
    scores = torch.matmul(q, keys.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    scores = scores.masked_fill(~visible, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, values)


__all__ = [
    "AttentionKind",
    "DecodeInputs",
    "LayerKernels",
    "RotaryTables",
    "StaticKVCache",
    "add_rms_norm",
    "decode",
    "prefill",
    "rms_norm",
    "rotate",
    "silu_mul",
]
