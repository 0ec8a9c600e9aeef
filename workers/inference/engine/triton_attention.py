"""Decode attention over each sequence's own length: a split-K Triton kernel (CUDA only).

Each program takes one (sequence, kv head, split) and reads only the keys and values of
positions ``[split · split_len, min((split + 1) · split_len, length))`` of that sequence, so a
step reads every sequence's own context and nothing past it; splits past a sequence's length
return at once. The lengths are read on the device, so a step with this kernel can be
recorded as a CUDA graph. Keys and values are fp16/bf16, or E4M3 with one float32 scale per
(token, head), dequantised in registers. The partial results are merged with their
log-sum-exp weights.

:func:`workers.inference.engine.forward.attend_varlen_reference` computes the same thing
with PyTorch operations on every device; ``bench/gpu_checks.py`` compares the two on a GPU
before timing anything.
"""

from __future__ import annotations

import math

import torch

try:  # Triton ships with CUDA builds of PyTorch; CPU builds have none.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on CPU-only installs
    triton = None
    tl = None

SPLIT_LEN = 256
"""Context positions per program."""
BLOCK_N = 64
"""Positions loaded per loop iteration."""


def available(device: torch.device) -> bool:
    """Whether the kernel can run on ``device``."""
    return triton is not None and device.type == "cuda"


if triton is not None:  # pragma: no cover - compiled and run on a GPU only

    @triton.jit  # type: ignore[untyped-decorator]
    def _partial_kernel(  # type: ignore[no-untyped-def]
        q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, len_ptr, out_ptr, lse_ptr,
        stride_qn, stride_qh,
        stride_kn, stride_kh, stride_kt,
        stride_sn, stride_sh,
        stride_on, stride_oh, stride_os,
        stride_ln, stride_lh,
        softmax_scale, split_len,
        GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_N: tl.constexpr, FP8: tl.constexpr,
    ):
        seq = tl.program_id(0)
        kv_head = tl.program_id(1)
        split = tl.program_id(2)
        length = tl.load(len_ptr + seq)
        start = split * split_len
        end = tl.minimum(start + split_len, length)
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, HEAD_DIM)
        g_mask = offs_g < GROUP
        heads = kv_head * GROUP + offs_g
        q = tl.load(q_ptr + seq * stride_qn + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=g_mask[:, None], other=0.0).to(tl.float32)
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
        k_base = k_ptr + seq * stride_kn + kv_head * stride_kh
        v_base = v_ptr + seq * stride_kn + kv_head * stride_kh
        s_base = seq * stride_sn + kv_head * stride_sh
        for t0 in range(start, end, BLOCK_N):
            offs_t = t0 + tl.arange(0, BLOCK_N)
            t_mask = offs_t < end
            k = tl.load(k_base + offs_t[:, None] * stride_kt + offs_d[None, :],
                        mask=t_mask[:, None], other=0.0).to(tl.float32)
            v = tl.load(v_base + offs_t[:, None] * stride_kt + offs_d[None, :],
                        mask=t_mask[:, None], other=0.0).to(tl.float32)
            if FP8:
                k_scale = tl.load(ks_ptr + s_base + offs_t, mask=t_mask, other=0.0)
                v_scale = tl.load(vs_ptr + s_base + offs_t, mask=t_mask, other=0.0)
                k = k * k_scale[:, None]
                v = v * v_scale[:, None]
            scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2) * softmax_scale
            scores = tl.where(t_mask[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(scores - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            m_i = m_new
        safe_l = tl.where(l_i > 0, l_i, 1.0)
        out = acc / safe_l[:, None]
        lse = tl.where(l_i > 0, m_i + tl.log(safe_l), float("-inf"))
        tl.store(out_ptr + seq * stride_on + heads[:, None] * stride_oh + split * stride_os
                 + offs_d[None, :], out, mask=g_mask[:, None])
        tl.store(lse_ptr + seq * stride_ln + heads * stride_lh + split, lse, mask=g_mask)


def attend_varlen_triton(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                         lengths: torch.Tensor, key_scales: torch.Tensor | None = None,
                         value_scales: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one query per sequence over its first ``lengths[i]`` cached positions.

    Parameters
    ----------
    q
        (n, kv_heads, group, head_dim) queries.
    keys, values
        (≥ n, kv_heads, capacity, head_dim) one layer of the cache (fp16/bf16 or E4M3).
    lengths
        (n,) int64 positions each sequence attends to (≥ 1).
    key_scales, value_scales
        (≥ n, kv_heads, capacity) float32 scales for an E4M3 cache, else ``None``.

    Returns
    -------
    torch.Tensor
        (n, kv_heads, group, head_dim) in ``q``'s dtype.
    """
    if triton is None:
        raise RuntimeError("Triton is not installed")
    n, kv_heads, group, head_dim = q.shape
    capacity = int(keys.shape[2])
    splits = max(1, math.ceil(capacity / SPLIT_LEN))
    flat_q = q.reshape(n, kv_heads * group, head_dim)
    out = torch.empty((n, kv_heads * group, splits, head_dim), dtype=torch.float32,
                      device=q.device)
    lse = torch.empty((n, kv_heads * group, splits), dtype=torch.float32, device=q.device)
    fp8 = key_scales is not None
    ks = key_scales if key_scales is not None else lengths
    vs = value_scales if value_scales is not None else lengths
    stride_sn = key_scales.stride(0) if key_scales is not None else 0
    stride_sh = key_scales.stride(1) if key_scales is not None else 0
    _partial_kernel[(n, kv_heads, splits)](
        flat_q, keys, values, ks, vs, lengths, out, lse,
        flat_q.stride(0), flat_q.stride(1),
        keys.stride(0), keys.stride(1), keys.stride(2),
        stride_sn, stride_sh,
        out.stride(0), out.stride(1), out.stride(2),
        lse.stride(0), lse.stride(1),
        head_dim ** -0.5, SPLIT_LEN,
        GROUP=group, BLOCK_G=max(1, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        BLOCK_N=BLOCK_N, FP8=fp8,
    )
    top = lse.amax(dim=-1, keepdim=True)
    weight = torch.exp(lse - top)
    merged = (out * weight[..., None]).sum(dim=2) / weight.sum(dim=-1)[..., None]
    return merged.to(q.dtype).view(n, kv_heads, group, head_dim)


__all__ = ["BLOCK_N", "SPLIT_LEN", "attend_varlen_triton", "available"]
