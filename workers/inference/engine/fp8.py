"""fp8 (E4M3) weights and KV cache: quantisation, dequantisation and the fp8 matrix product.

E4M3 (``torch.float8_e4m3fn``) keeps 3 mantissa bits and a largest finite value of 448.
Weights are quantised per output channel: each row gets the scale ``max |row| / 448``, so a
row's largest element maps to 448 and every element keeps a relative rounding error of at
most 2⁻⁴ (half a unit in the last of 3 mantissa bits) while it stays in E4M3's normal range
(magnitudes ≥ 2⁻⁶ · scale); smaller elements lose relative precision but keep an absolute
error of at most 2⁻¹⁰ · scale (half the subnormal spacing 2⁻⁹).

A product ``x @ Wᵀ`` quantises the activations too, per row (token), with the same rule
("W8A8", dynamic per-token scales) and multiplies the fp8 operands with float32
accumulation: on a GPU with fp8 tensor cores (``torch._scaled_mm``), on other devices by the
reference path, which dequantises both operands to float32 and multiplies them; the two
compute the same products of the same fp8 values.

The KV cache stores keys and values in E4M3 with one float32 scale per (token, head) vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(torch.float8_e4m3fn).max)
"""Largest finite E4M3 value (448)."""
FP8_MANTISSA_BITS = 3
FP8_MIN_NORMAL = 2.0**-6
"""Smallest normal E4M3 magnitude."""
_TINY = 1e-12


def relative_error_bound() -> float:
    """Largest relative rounding error of a value in E4M3's normal range: 2^-(3+1)."""
    return 2.0 ** -(FP8_MANTISSA_BITS + 1)


def absolute_error_bound(scale: torch.Tensor) -> torch.Tensor:
    """Largest absolute rounding error of any value quantised with ``scale``.

    Normal values: ``|v| · 2⁻⁴ ≤ 448 · scale · 2⁻⁴``; subnormal ones: half the subnormal
    spacing, ``2⁻¹⁰ · scale``. The bound for a whole row is the larger, ``28 · scale``.
    """
    return scale * (FP8_MAX * relative_error_bound())


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise each row (last dimension) of ``x`` to E4M3 with its own scale.

    Parameters
    ----------
    x
        (..., k) floating tensor.

    Returns
    -------
    tuple of torch.Tensor
        ``(q, scale)``: (..., k) E4M3 values and (..., 1) float32 scales with
        ``x ≈ q · scale``; an all-zero row gets a tiny positive scale and zeros.
    """
    xf = x.to(torch.float32)
    scale = (xf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=_TINY)
    q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
    """``q · scale`` in ``dtype`` (the multiplication in float32)."""
    return (q.to(torch.float32) * scale).to(dtype)


@dataclass(frozen=True)
class Fp8Matrix:
    """A weight matrix (out, in) in E4M3 with one float32 scale per output channel.

    Attributes
    ----------
    values
        (out, in) ``torch.float8_e4m3fn``.
    scale
        (out, 1) float32.
    out_dtype
        Dtype of the product (the model's activation dtype).
    """

    values: torch.Tensor
    scale: torch.Tensor
    out_dtype: torch.dtype

    @classmethod
    def from_weight(cls, weight: torch.Tensor) -> Fp8Matrix:
        """Quantise an (out, in) weight matrix per output channel."""
        values, scale = quantize_rows(weight)
        return cls(values.contiguous(), scale.contiguous(), weight.dtype)

    @property
    def shape(self) -> torch.Size:
        """(out, in)."""
        return self.values.shape

    @property
    def nbytes(self) -> int:
        """Bytes a product reads: the E4M3 values and the scales."""
        return self.values.nbytes + self.scale.nbytes

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The matrix the fp8 values stand for."""
        return dequantize(self.values, self.scale, dtype)


def fp8_linear_reference(x: torch.Tensor, weight: Fp8Matrix) -> torch.Tensor:
    """``x @ Wᵀ`` with ``x`` quantised per row: both operands dequantised, float32 product."""
    xq, xs = quantize_rows(x)
    product = F.linear(dequantize(xq, xs), weight.dequantized())
    return product.to(weight.out_dtype)


_PRODUCT_DTYPE: dict[tuple[str, torch.dtype], torch.dtype] = {}
"""Output dtype ``torch._scaled_mm`` accepts with row-wise scales, per (device type, wanted
dtype): some builds give row-wise scaled products in bfloat16 only."""


def _scaled_mm(xq: torch.Tensor, xs: torch.Tensor, weight: Fp8Matrix) -> torch.Tensor:
    key = (xq.device.type, weight.out_dtype)
    dtype = _PRODUCT_DTYPE.get(key)
    if dtype is None:
        try:
            out = torch._scaled_mm(xq, weight.values.t(), scale_a=xs, scale_b=weight.scale.t(),
                                   out_dtype=weight.out_dtype)
        except RuntimeError:
            _PRODUCT_DTYPE[key] = torch.bfloat16
        else:
            _PRODUCT_DTYPE[key] = weight.out_dtype
            return out
        dtype = torch.bfloat16
    out = torch._scaled_mm(xq, weight.values.t(), scale_a=xs, scale_b=weight.scale.t(),
                           out_dtype=dtype)
    return out.to(weight.out_dtype)


def fp8_linear_scaled_mm(x: torch.Tensor, weight: Fp8Matrix) -> torch.Tensor:
    """``x @ Wᵀ`` through ``torch._scaled_mm`` (fp8 operands, row-wise scales).

    On CUDA the row count is padded to a multiple of 16, as the fp8 tensor-core kernels ask.
    """
    rows = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    count = int(flat.shape[0])
    if flat.device.type == "cuda" and count % 16:
        flat = F.pad(flat, (0, 0, 0, 16 - count % 16))
    xq, xs = quantize_rows(flat)
    out = _scaled_mm(xq, xs, weight)
    return out[:count].reshape(*rows, weight.shape[0])


def fp8_linear(x: torch.Tensor, weight: Fp8Matrix, *, use_scaled_mm: bool) -> torch.Tensor:
    """The fp8 product, on the tensor-core path or the reference path."""
    if use_scaled_mm:
        return fp8_linear_scaled_mm(x, weight)
    return fp8_linear_reference(x, weight)


__all__ = [
    "FP8_DTYPE",
    "FP8_MANTISSA_BITS",
    "FP8_MAX",
    "FP8_MIN_NORMAL",
    "Fp8Matrix",
    "absolute_error_bound",
    "dequantize",
    "fp8_linear",
    "fp8_linear_reference",
    "fp8_linear_scaled_mm",
    "quantize_rows",
    "relative_error_bound",
]
