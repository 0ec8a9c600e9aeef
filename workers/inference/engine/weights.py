"""The LLM's weights in the layout the decode engine reads.

The engine runs LLaMA-family decoders (LLaMA-2, Vicuna: RMSNorm, rotary positions,
SwiGLU MLP, optional grouped-query attention, no biases). The query/key/value projections
and the gate/up projections are concatenated into one matrix each, so a decode step reads
each layer with four matrix products. The Hugging Face module keeps working: its own
parameters are re-pointed at row slices of the fused matrices, so nothing is stored twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, TypeAlias

import torch
from torch import nn

from workers.inference.engine.fp8 import Fp8Matrix

Matrix: TypeAlias = torch.Tensor | Fp8Matrix
"""A projection matrix (out, in): in the model's dtype, or E4M3 with per-channel scales."""


class UnsupportedModelError(ValueError):
    """The model is not a decoder the engine can run (the reference path is used instead)."""


@dataclass(frozen=True)
class DecoderShape:
    """Dimensions of a LLaMA-family decoder.

    Attributes
    ----------
    num_layers, hidden, intermediate, vocab
        Depth and widths.
    num_heads, num_kv_heads, head_dim
        Attention heads (``num_kv_heads < num_heads`` for grouped-query attention).
    rms_eps
        RMSNorm epsilon.
    max_positions
        ``max_position_embeddings`` of the model.
    """

    num_layers: int
    hidden: int
    intermediate: int
    vocab: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float
    max_positions: int

    @property
    def q_width(self) -> int:
        """Width of the query projection output."""
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of the key (or value) projection output."""
        return self.num_kv_heads * self.head_dim

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token occupies across all layers (fp16/bf16)."""
        return 2 * self.num_layers * self.kv_width * 2


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer; matrices are (out, in) like ``nn.Linear.weight``."""

    input_norm: torch.Tensor
    qkv: Matrix
    out: Matrix
    post_norm: torch.Tensor
    gate_up: Matrix
    down: Matrix

    def nbytes(self) -> int:
        """Bytes of the layer's weights (E4M3 values and scales for fp8 matrices)."""
        return sum(t.nbytes for t in (self.input_norm, self.qkv, self.out, self.post_norm,
                                      self.gate_up, self.down))


@dataclass(frozen=True)
class DecoderWeights:
    """Everything a forward pass reads.

    Attributes
    ----------
    shape
        Dimensions.
    embed
        (vocab, hidden) input embedding.
    layers
        Per-layer weights.
    final_norm, lm_head
        Output norm weight and (vocab, hidden) output projection.
    inv_freq
        float32 rotary inverse frequencies (head_dim / 2), from the model's own rotary module.
    rope_scale
        Multiplier of cos/sin (1.0 for plain RoPE).
    """

    shape: DecoderShape
    embed: torch.Tensor
    layers: tuple[LayerWeights, ...]
    final_norm: torch.Tensor
    lm_head: torch.Tensor
    inv_freq: torch.Tensor
    rope_scale: float

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights (and of the KV cache)."""
        return self.embed.dtype

    def nbytes(self) -> int:
        """Bytes of weights a decode step reads (embedding rows excluded)."""
        return (self.final_norm.nbytes + self.lm_head.nbytes
                + sum(layer.nbytes() for layer in self.layers))

    @property
    def fp8(self) -> bool:
        """Whether the layers' projections are E4M3."""
        return isinstance(self.layers[0].qkv, Fp8Matrix)


def to_fp8(weights: DecoderWeights) -> DecoderWeights:
    """The same decoder with every layer's projections in E4M3, per output channel.

    Norm weights, the embedding and the output projection (``lm_head``, which decides the
    logits directly and is about 2 % of a 7B model's bytes) stay in the model's dtype.
    """
    def quantized(matrix: Matrix) -> Fp8Matrix:
        return matrix if isinstance(matrix, Fp8Matrix) else Fp8Matrix.from_weight(matrix)

    layers = tuple(
        replace(layer, qkv=quantized(layer.qkv), out=quantized(layer.out),
                gate_up=quantized(layer.gate_up), down=quantized(layer.down))
        for layer in weights.layers
    )
    return replace(weights, layers=layers)


def unsupported_reason(model: Any) -> str | None:
    """Why the engine cannot run ``model``, or ``None`` when it can.

    Parameters
    ----------
    model
        A Hugging Face causal LM.
    """
    config = getattr(model, "config", None)
    if config is None:
        return "model has no config"
    if getattr(config, "model_type", None) != "llama":
        return f"model type {getattr(config, 'model_type', None)!r} is not a LLaMA decoder"
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        return "biased projections are not supported"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} is not SiLU"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = (rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict)
                 else "default")
    if rope_type == "dynamic" or rope_type == "longrope":
        return f"rope type {rope_type!r} changes with the sequence length"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "model does not have the LLaMA module layout"
    return None


def _fuse(parts: list[nn.Linear]) -> torch.Tensor:
    """Concatenate linear weights by rows and re-point each module at its slice."""
    fused = torch.cat([p.weight.detach() for p in parts], dim=0).contiguous()
    start = 0
    for part in parts:
        rows = part.weight.shape[0]
        part.weight.data = fused[start:start + rows]
        start += rows
    return fused


def extract_weights(model: Any) -> DecoderWeights:
    """Read (and fuse in place) the weights of a LLaMA-family ``model``.

    Parameters
    ----------
    model
        A Hugging Face ``LlamaForCausalLM`` (eval mode, on its final device and dtype).

    Returns
    -------
    DecoderWeights

    Raises
    ------
    UnsupportedModelError
        When :func:`unsupported_reason` finds a reason.
    """
    reason = unsupported_reason(model)
    if reason is not None:
        raise UnsupportedModelError(reason)
    config = model.config
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    shape = DecoderShape(
        num_layers=int(config.num_hidden_layers),
        hidden=int(config.hidden_size),
        intermediate=int(config.intermediate_size),
        vocab=int(config.vocab_size),
        num_heads=int(config.num_attention_heads),
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        rms_eps=float(config.rms_norm_eps),
        max_positions=int(config.max_position_embeddings),
    )
    inner = model.model
    layers: list[LayerWeights] = []
    with torch.no_grad():
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            layers.append(LayerWeights(
                input_norm=layer.input_layernorm.weight.detach(),
                qkv=_fuse([attn.q_proj, attn.k_proj, attn.v_proj]),
                out=attn.o_proj.weight.detach(),
                post_norm=layer.post_attention_layernorm.weight.detach(),
                gate_up=_fuse([mlp.gate_proj, mlp.up_proj]),
                down=mlp.down_proj.weight.detach(),
            ))
    rotary = inner.rotary_emb
    return DecoderWeights(
        shape=shape,
        embed=inner.embed_tokens.weight.detach(),
        layers=tuple(layers),
        final_norm=inner.norm.weight.detach(),
        lm_head=model.get_output_embeddings().weight.detach(),
        inv_freq=rotary.inv_freq.detach().to(torch.float32),
        rope_scale=float(getattr(rotary, "attention_scaling", 1.0)),
    )


__all__ = [
    "DecoderShape",
    "DecoderWeights",
    "LayerWeights",
    "Matrix",
    "UnsupportedModelError",
    "extract_weights",
    "to_fp8",
    "unsupported_reason",
]
