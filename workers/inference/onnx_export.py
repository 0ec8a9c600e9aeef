"""Export of :class:`~workers.inference.encoder.ImageEncoder` to ONNX and parity checks."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from workers.inference.encoder import INPUT_NAME, OUTPUT_NAME, ImageEncoder, OnnxImageEncoder
from workers.inference.runtime import CPU

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


def export_encoder_onnx(
    encoder: ImageEncoder,
    path: Path,
    *,
    opset: int = DEFAULT_OPSET,
    example_batch: int = 2,
) -> Path:
    """Export ``encoder`` to ONNX with a dynamic batch axis.

    The graph takes ``pixels`` float32 (B, C, H, W) and returns ``embeds`` float32
    (B, T, D). The TorchScript-based exporter is used (deterministic, no extra
    dependencies); the encoder is exported in float32 on CPU whatever its current state.

    Parameters
    ----------
    encoder
        The torch encoder.
    path
        Output file; parent folders are created.
    opset
        ONNX opset (at least 17: LayerNormalization is a native op from 17).
    example_batch
        Batch size of the tracing example (not baked in: the axis is dynamic).

    Returns
    -------
    Path
        ``path``.
    """
    if opset < 17:
        raise ValueError("opset must be >= 17")
    module = copy.deepcopy(encoder).to(device="cpu", dtype=torch.float32).eval()
    channels, height, width = module.input_shape
    example = torch.zeros(example_batch, channels, height, width, dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    _check_model(path)
    return path


def _check_model(path: Path) -> None:
    import onnx

    # Path-based check also works for models above the 2 GiB protobuf limit.
    onnx.checker.check_model(str(path))


def parity_inputs(
    channels: int, size: int, *, seed: int = 0, random_count: int = 2
) -> list[tuple[str, np.ndarray]]:
    """Return named test batches (1, C, H, W) for ONNX-vs-torch comparisons.

    Random normal images plus structured ones (constant, ramp, checkerboard, a bright disc),
    in the range of normalised pixels (about -2..2).
    """
    rng = np.random.default_rng(seed)
    inputs: list[tuple[str, np.ndarray]] = []
    for index in range(random_count):
        inputs.append(
            (f"random_{index}", rng.standard_normal((1, channels, size, size)).astype(np.float32))
        )
    axis = np.linspace(-2.0, 2.0, size, dtype=np.float32)
    ramp = np.broadcast_to(axis[None, :], (size, size))
    yy, xx = np.mgrid[0:size, 0:size]
    checker = np.where(((yy // 8) + (xx // 8)) % 2 == 0, 1.5, -1.5).astype(np.float32)
    radius = np.hypot(yy - size / 2, xx - size / 2)
    disc = np.where(radius < size / 4, 2.0, -1.0).astype(np.float32)
    for name, plane in (
        ("zeros", np.zeros((size, size), np.float32)),
        ("ramp", ramp),
        ("checker", checker),
        ("disc", disc),
    ):
        batch = np.broadcast_to(plane, (1, channels, size, size)).astype(np.float32)
        inputs.append((name, np.ascontiguousarray(batch)))
    return inputs


def max_abs_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Largest absolute element-wise difference (shapes must match)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch {reference.shape} vs {candidate.shape}")
    return float(np.max(np.abs(reference.astype(np.float64) - candidate.astype(np.float64))))


def onnx_torch_parity(
    encoder: ImageEncoder,
    onnx_path: Path,
    *,
    providers: list[str] | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Compare ONNX and torch outputs on :func:`parity_inputs`.

    Returns
    -------
    tuple of float
        ``(max_abs_error, reference_scale)`` where the scale is the largest absolute value
        of the torch outputs.
    """
    session = OnnxImageEncoder(onnx_path, providers=providers or [CPU])
    channels, size, _ = encoder.input_shape
    worst = 0.0
    scale = 0.0
    module = encoder.to(torch.float32).eval()
    for _name, batch in parity_inputs(channels, size, seed=seed):
        reference = module.encode(batch)
        candidate = session.encode(batch)
        worst = max(worst, max_abs_error(reference, candidate))
        scale = max(scale, float(np.max(np.abs(reference))))
    return worst, scale


__all__ = [
    "DEFAULT_OPSET",
    "export_encoder_onnx",
    "max_abs_error",
    "onnx_torch_parity",
    "parity_inputs",
]
