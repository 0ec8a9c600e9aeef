"""Model bundle manifest: the typed description of one drafting model.

A bundle is a folder::

    manifest.json          this model, validated by :class:`BundleManifest`
    encoder.onnx           vision tower + projector, float32 (B, C, H, W) -> (B, T, D)
    encoder.safetensors    the torch reference weights of the same encoder
    llm/                   Hugging Face ``save_pretrained`` layout (config, weights, tokenizer)

Every file in the folder (other than ``manifest.json``) is listed in
:attr:`BundleManifest.files` with its SHA-256 so that a bundle can be verified before use.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MANIFEST_FILENAME = "manifest.json"
ENCODER_ONNX_FILENAME = "encoder.onnx"
ENCODER_WEIGHTS_FILENAME = "encoder.safetensors"
LLM_DIRNAME = "llm"
FORMAT_VERSION = 1

# CLIP image statistics used by open_clip / LLaVA-style towers.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


class _Spec(BaseModel):
    """Base class: strict about unknown keys, immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class VisionSpec(_Spec):
    """Shape and behaviour of the vision transformer.

    ``select_layer`` indexes the hidden-state list the way Hugging Face does: entry 0 is the
    embedding output (after ``ln_pre``/``norm_pre``), entry ``i`` the output of block ``i - 1``;
    negative values count from the end (``-1`` = last block, ``-2`` = the one before).
    ``final_norm`` says whether the trunk's final norm (``norm`` / ``ln_post``) is applied to
    the selected hidden state; ``layerscale`` whether blocks carry LayerScale ``gamma``.
    """

    kind: Literal["dinov2_vit", "openclip_vit"]
    image_size: int = Field(gt=0)
    patch_size: int = Field(gt=0)
    width: int = Field(gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(default=4.0, gt=0)
    in_channels: int = Field(gt=0)
    select_layer: int
    drop_cls: bool
    final_norm: bool
    layerscale: bool
    norm_eps: float = Field(default=1e-6, gt=0)
    activation: Literal["gelu", "gelu_tanh", "quick_gelu"] = "gelu"
    no_ln_pre: bool = False  # open_clip only: True when the tower has no ln_pre

    @model_validator(mode="after")
    def _check_geometry(self) -> VisionSpec:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.width % self.heads:
            raise ValueError("width must be divisible by heads")
        if not -(self.layers + 1) <= self.select_layer <= self.layers:
            raise ValueError(
                f"select_layer {self.select_layer} out of range for {self.layers} layers"
            )
        return self

    @property
    def grid(self) -> int:
        """Number of patches along one side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Number of patch tokens (without CLS)."""
        return self.grid * self.grid

    @property
    def num_output_tokens(self) -> int:
        """Number of tokens the tower hands to the projector."""
        return self.num_patches + (0 if self.drop_cls else 1)

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of the block MLP."""
        return int(self.width * self.mlp_ratio)

    @property
    def block_count_needed(self) -> int:
        """How many blocks must run to produce the selected hidden state."""
        index = self.select_layer if self.select_layer >= 0 else self.layers + 1 + self.select_layer
        return index


class ProjectorSpec(_Spec):
    """Adapter from vision width to LLM hidden width."""

    kind: Literal["mlp2x_gelu", "linear"]
    in_dim: int = Field(gt=0)
    out_dim: int = Field(gt=0)


class PreprocessSpec(_Spec):
    """Pixel preprocessing expected by the encoder (applied before ``encoder.onnx``).

    ``crop_offset`` is how the centre crop places an odd remainder: ``"round"`` is
    torchvision's ``CenterCrop`` (``round((side - size) / 2)``, open_clip and LLaVA-Rad),
    ``"floor"`` the Hugging Face image processors' ``(side - size) // 2`` (CXR-LLaVA).
    """

    channels: Literal[1, 3]
    size: int = Field(gt=0)
    resample: Literal["bicubic", "lanczos", "bilinear"]
    mean: list[float]
    std: list[float]
    crop_offset: Literal["round", "floor"] = "round"

    @model_validator(mode="after")
    def _check_stats(self) -> PreprocessSpec:
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} must have 1 or {self.channels} entries")
        if any(s <= 0 for s in self.std):
            raise ValueError("std entries must be positive")
        return self


class PromptSpec(_Spec):
    """Conversation template of the model."""

    style: Literal["vicuna_v1", "llama2_chat", "radnode_plain"]
    system: str
    question: str
    question_with_indication: str | None = None
    image_token: str = "<image>"

    @field_validator("question_with_indication")
    @classmethod
    def _has_placeholder(cls, value: str | None) -> str | None:
        if value is not None and "{indication}" not in value:
            raise ValueError("question_with_indication must contain '{indication}'")
        return value


class TokenizerSpec(_Spec):
    """How the upstream code configured its (LLaMA) tokenizer, applied again at run time.

    ``legacy`` is the ``transformers`` LlamaTokenizer flag: ``True`` puts a word-start
    marker in front of every piece of text that follows a special token (``<s>[INST]``
    → ``<s>``, ``▁[``), ``False`` only at the start of the text (``<s>``, ``[``).
    ``add_bos_token`` / ``add_eos_token`` say which special ids the tokenizer adds around
    every piece it encodes. The defaults are what ``transformers`` 4.3x used when a
    ``tokenizer_config.json`` did not say: they apply to bundles written before these
    settings were recorded.
    """

    legacy: bool = True
    add_bos_token: bool = True
    add_eos_token: bool = False


class GenerationSpec(_Spec):
    """Decoding parameters; ``temperature == 0`` means greedy decoding."""

    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = Field(gt=0)
    repetition_penalty: float = Field(default=1.0, gt=0)
    top_k: int = Field(default=0, ge=0)  # 0 disables top-k filtering

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (no sampling)."""
        return self.temperature <= 0.0

    def with_overrides(self, overrides: Mapping[str, float | int]) -> GenerationSpec:
        """This spec with ``overrides`` (field name → value) applied and validated."""
        return GenerationSpec(**{**self.model_dump(), **overrides})


class EngineSpec(_Spec):
    """How the decode engine (:mod:`workers.inference.engine`) runs the LLM; read only when a
    worker drafts through the engine.

    ``weights = "fp8"`` stores the layers' projection matrices in E4M3 with one scale per
    output channel and multiplies them on the fp8 tensor cores (activations quantised per
    token); ``kv_cache = "fp8"`` keeps keys and values in E4M3 with one scale per (token,
    head) vector. Both halve the bytes a decode step reads and change the model's numbers
    slightly (see docs/models.md for the measured agreement); both are off by default.
    """

    weights: Literal["model", "fp8"] = "model"
    kv_cache: Literal["model", "fp8"] = "model"


class BundleManifest(BaseModel):
    """Everything the node needs to know about one model bundle."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    format_version: int = FORMAT_VERSION
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    architecture: Literal["llava-rad", "cxr-llava", "radnode-synth"]
    vision: VisionSpec
    projector: ProjectorSpec
    preprocess: PreprocessSpec
    prompt: PromptSpec
    generation: GenerationSpec
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    llm_dtype: str
    num_image_tokens: int = Field(gt=0)
    licence: str
    intended_use: str
    synthetic: bool
    device_uid: str = Field(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)
    output_sections: Literal["findings", "findings_impression"]
    engine: EngineSpec = Field(default_factory=EngineSpec)
    files: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _upstream_crop_default(cls, data: Any) -> Any:
        """Bundles written before ``crop_offset`` existed get their upstream's rule."""
        if not isinstance(data, dict) or data.get("architecture") != "cxr-llava":
            return data
        preprocess = data.get("preprocess")
        if isinstance(preprocess, dict) and "crop_offset" not in preprocess:
            return {**data, "preprocess": {**preprocess, "crop_offset": "floor"}}
        return data

    @model_validator(mode="after")
    def _check_consistency(self) -> BundleManifest:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"unsupported bundle format_version {self.format_version}")
        if self.projector.in_dim != self.vision.width:
            raise ValueError("projector.in_dim must equal vision.width")
        if self.num_image_tokens != self.vision.num_output_tokens:
            raise ValueError(
                f"num_image_tokens {self.num_image_tokens} != vision tokens "
                f"{self.vision.num_output_tokens}"
            )
        if self.preprocess.channels != self.vision.in_channels:
            raise ValueError("preprocess.channels must equal vision.in_channels")
        if self.preprocess.size != self.vision.image_size:
            raise ValueError("preprocess.size must equal vision.image_size")
        for rel, digest in self.files.items():
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise ValueError(f"file path {rel!r} must be relative inside the bundle")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"file {rel!r} has a malformed sha256")
        return self

    def to_json(self) -> str:
        """Serialise to pretty JSON text."""
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BundleManifest:
        """Parse and validate JSON text."""
        return cls.model_validate_json(text)

    def save(self, path: Path | str) -> Path:
        """Write the manifest atomically.

        Parameters
        ----------
        path
            A bundle folder (``manifest.json`` is written inside) or a file path.

        Returns
        -------
        Path
            The file written.
        """
        target = Path(path)
        if target.is_dir():
            target = target / MANIFEST_FILENAME
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".manifest-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: Path | str) -> BundleManifest:
        """Read and validate a manifest.

        Parameters
        ----------
        path
            A bundle folder or the ``manifest.json`` file itself.
        """
        source = Path(path)
        if source.is_dir():
            source = source / MANIFEST_FILENAME
        data = json.loads(source.read_text(encoding="utf-8"))
        return cls.model_validate(data)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def new_device_uid() -> str:
    """Return a fresh DICOM UID (``2.25.<uuid4 as integer>``) for one bundle build."""
    import uuid

    return f"2.25.{uuid.uuid4().int}"


__all__ = [
    "BundleManifest",
    "CLIP_MEAN",
    "CLIP_STD",
    "ENCODER_ONNX_FILENAME",
    "ENCODER_WEIGHTS_FILENAME",
    "EngineSpec",
    "FORMAT_VERSION",
    "GenerationSpec",
    "LLM_DIRNAME",
    "MANIFEST_FILENAME",
    "PreprocessSpec",
    "ProjectorSpec",
    "PromptSpec",
    "TokenizerSpec",
    "VisionSpec",
    "new_device_uid",
    "sha256_file",
]
