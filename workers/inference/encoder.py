"""Image encoder = vision tower + projector, in torch and as an ONNX Runtime session."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from workers.inference.manifest import ProjectorSpec, VisionSpec
from workers.inference.projector import build_projector
from workers.inference.runtime import TENSORRT, ProviderEntry, provider_names, select_providers
from workers.inference.vision import build_vision_tower

log = logging.getLogger(__name__)

INPUT_NAME = "pixels"
OUTPUT_NAME = "embeds"


class ImageEncoder(nn.Module):
    """Vision tower followed by the projector.

    ``forward`` maps float32 pixels (B, C, H, W), already normalised, to image embeddings
    (B, tokens, out_dim) in the LLM's hidden width. State-dict keys are ``vision.*`` (the
    upstream tower names) and ``projector.*``.
    """

    def __init__(self, vision: VisionSpec, projector: ProjectorSpec) -> None:
        super().__init__()
        if projector.in_dim != vision.width:
            raise ValueError("projector.in_dim must equal vision.width")
        self.vision_spec = vision
        self.projector_spec = projector
        self.vision = build_vision_tower(vision)
        self.projector = build_projector(projector)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Expected (C, H, W) of one image."""
        spec = self.vision_spec
        return spec.in_channels, spec.image_size, spec.image_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.vision(pixels)
        embeds: torch.Tensor = self.projector(features)
        return embeds

    @torch.no_grad()
    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Run on a numpy batch (B, C, H, W) and return float32 numpy (B, T, D)."""
        param = next(self.parameters())
        tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        with torch.inference_mode():
            out = self(tensor.to(device=param.device, dtype=param.dtype))
        result: np.ndarray = out.float().cpu().numpy()
        return result


def build_image_encoder(vision: VisionSpec, projector: ProjectorSpec) -> ImageEncoder:
    """Build an (uninitialised) :class:`ImageEncoder` from its specs.

    Parameters
    ----------
    vision, projector
        Tower and adapter descriptions, usually taken from a bundle manifest.

    Returns
    -------
    ImageEncoder
        The module in eval mode, float32, on CPU.
    """
    return ImageEncoder(vision, projector).eval()


def load_encoder_state(encoder: ImageEncoder, state: Mapping[str, torch.Tensor]) -> ImageEncoder:
    """Load ``state`` strictly into ``encoder`` (float32), raising on missing/unexpected keys."""
    converted = {k: v.to(torch.float32) for k, v in state.items()}
    missing, unexpected = encoder.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise KeyError(
            f"encoder weights mismatch: missing={sorted(missing)} unexpected={sorted(unexpected)}"
        )
    return encoder


def save_encoder_weights(encoder: ImageEncoder, path: Path) -> Path:
    """Write the encoder state dict as float32 safetensors."""
    state = {
        k: v.detach().to(torch.float32).contiguous().cpu() for k, v in encoder.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def load_encoder_weights(path: Path, vision: VisionSpec, projector: ProjectorSpec) -> ImageEncoder:
    """Build an encoder from specs and fill it from a safetensors file.

    Parameters
    ----------
    path
        ``encoder.safetensors`` of a bundle.
    vision, projector
        The bundle's specs.

    Returns
    -------
    ImageEncoder
        Float32, eval mode, on CPU.
    """
    encoder = build_image_encoder(vision, projector)
    return load_encoder_state(encoder, load_file(str(path)))


class OnnxImageEncoder:
    """ONNX Runtime session over ``encoder.onnx``.

    Parameters
    ----------
    path
        The ONNX file.
    providers
        Provider names or entries; ``None`` picks TensorRT > CUDA > CPU from what is
        available (see :func:`workers.inference.runtime.select_providers`).
    intra_op_threads
        CPU threads for the session (``None``: onnxruntime default).
    """

    def __init__(
        self,
        path: Path | str,
        providers: Sequence[ProviderEntry] | None = None,
        *,
        intra_op_threads: int | None = None,
    ) -> None:
        import onnxruntime

        entries = list(providers) if providers is not None else select_providers()
        options = onnxruntime.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        self.path = Path(path)
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=entries
            )
        except Exception:
            # TensorRT can be listed yet unusable (libraries missing, unsupported GPU):
            # retry once without it rather than failing the whole worker.
            if TENSORRT not in provider_names(entries):
                raise
            log.warning("TensorRT provider failed to start; retrying without it", exc_info=True)
            entries = [e for e in entries if provider_names([e])[0] != TENSORRT]
            self.session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=entries
            )
        self.requested_providers = provider_names(entries)
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)

    @property
    def providers(self) -> list[str]:
        """Providers the session actually uses."""
        return list(self.session.get_providers())

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Encode a float32 batch (B, C, H, W) to (B, T, D).

        A single image (C, H, W) is accepted and returned as (1, T, D).
        """
        array = np.ascontiguousarray(pixels, dtype=np.float32)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise ValueError(f"pixels must be (B, C, H, W), got shape {array.shape}")
        expected = self.input_shape[1:]
        if any(
            isinstance(e, int) and e != a for e, a in zip(expected, array.shape[1:], strict=True)
        ):
            raise ValueError(
                f"pixels shape {array.shape[1:]} does not match encoder input {expected}"
            )
        outputs = self.session.run(None, {self.input_name: array})
        result: np.ndarray = np.asarray(outputs[0], dtype=np.float32)
        return result


__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ImageEncoder",
    "OnnxImageEncoder",
    "build_image_encoder",
    "load_encoder_state",
    "load_encoder_weights",
    "save_encoder_weights",
]
