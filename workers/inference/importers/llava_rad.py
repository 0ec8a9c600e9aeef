"""Import Microsoft LLaVA-Rad (HF ``microsoft/llava-rad`` files + a local Vicuna-7B-v1.5).

The published folder is not a merged model: it carries a PEFT LoRA adapter for the base LLM,
the projector (``non_lora_trainables.bin``) and an open_clip checkpoint of the BiomedCLIP-CXR
vision tower (a timm DINOv2 ViT-B/14 trunk at 518 px). This importer merges the LoRA into the
base weights itself (``W + (alpha / r) * B @ A``), maps the tower and projector into an
:class:`~workers.inference.encoder.ImageEncoder` and writes a bundle. No code from the
checkpoints is executed.
"""

from __future__ import annotations

import math
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.inference.bundle import write_bundle
from workers.inference.encoder import build_image_encoder, load_encoder_state
from workers.inference.importers import (
    CheckpointFormatError,
    Progress,
    ShardedSafetensorsWriter,
    iter_weight_tensors,
    load_pickled_checkpoint,
    load_tokenizer_from,
    read_json,
    report,
    scaled_progress,
    tokenizer_settings_from,
    weight_files,
    write_llama_config,
)
from workers.inference.llm import resolve_dtype
from workers.inference.manifest import (
    CLIP_MEAN,
    CLIP_STD,
    BundleManifest,
    GenerationSpec,
    PreprocessSpec,
    ProjectorSpec,
    VisionSpec,
    new_device_uid,
)
from workers.inference.prompts import llava_rad_prompt_spec

VISION_CONFIG_NAME = "biomedclipcxr_518.json"
VISION_CHECKPOINT_NAME = "biomedclipcxr_518_checkpoint.pt"
TRUNK_PREFIXES = ("module.visual.trunk.", "visual.trunk.")
# timm name -> (width, heads); other widths fall back to DINOv2's 64-wide heads.
DINOV2_GEOMETRY = {
    "vit_small_patch14_dinov2": (384, 6),
    "vit_base_patch14_dinov2": (768, 12),
    "vit_large_patch14_dinov2": (1024, 16),
}
LICENCE = (
    "Microsoft Research License Agreement (LLaVA-Rad weights): research use only, not for "
    "clinical use; base LLM Vicuna-7B-v1.5 under the LLaMA 2 Community License."
)
INTENDED_USE = (
    "Research use only. Drafts the Findings section of frontal (AP/PA) chest radiograph "
    "reports for radiologist review; not a medical device and not for clinical decisions."
)
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.lora_(?P<which>A|B)(?:\.(?P<adapter>[A-Za-z0-9_-]+))?\.weight$"
)
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraPair:
    """One LoRA update ``scale * B @ A`` for the Linear ``module``."""

    module: str
    a: torch.Tensor
    b: torch.Tensor
    scale: float

    def delta(self) -> torch.Tensor:
        """The float32 weight update (out, in)."""
        return self.scale * (self.b.to(torch.float32) @ self.a.to(torch.float32))


def lora_scale(alpha: float, rank: int, *, rslora: bool = False) -> float:
    """PEFT's scaling: ``alpha / r`` (``alpha / sqrt(r)`` for rank-stabilised LoRA)."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def _pattern_value(patterns: dict[str, Any], module: str, default: float) -> float:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return float(value)
    return default


def load_lora_adapter(src_dir: Path, *, allow_unsafe_pickle: bool = False) -> dict[str, LoraPair]:
    """Read a PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.{safetensors,bin}``).

    Keys such as ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` (with or
    without an adapter name like ``.default``) are grouped per target module, named as in the
    base model (``model.layers.0.self_attn.q_proj``).

    Returns
    -------
    dict
        Module name → :class:`LoraPair`.
    """
    config = read_json(src_dir / "adapter_config.json")
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointFormatError(f"adapter is {config.get('peft_type')!r}, expected LORA")
    if config.get("fan_in_fan_out", False):
        raise CheckpointFormatError(
            "fan_in_fan_out LoRA (Conv1D targets) is not supported for LLaMA"
        )
    if config.get("bias", "none") != "none":
        raise CheckpointFormatError(f"LoRA bias={config.get('bias')!r} is not supported")
    if config.get("use_dora", False):
        raise CheckpointFormatError("DoRA adapters are not supported")
    alpha = float(config["lora_alpha"])
    rslora = bool(config.get("use_rslora", False))
    alpha_pattern: dict[str, Any] = config.get("alpha_pattern") or {}
    weights_path = src_dir / "adapter_model.safetensors"
    if not weights_path.is_file():
        weights_path = src_dir / "adapter_model.bin"
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in iter_weight_tensors(weights_path, allow_unsafe_pickle=allow_unsafe_pickle):
        name = key[len(_PEFT_PREFIX) :] if key.startswith(_PEFT_PREFIX) else key
        match = _LORA_KEY.match(name)
        if match is None:
            raise CheckpointFormatError(f"unexpected adapter tensor {key!r}")
        grouped.setdefault(match["module"], {})[match["which"]] = tensor
    pairs: dict[str, LoraPair] = {}
    for module, parts in grouped.items():
        if set(parts) != {"A", "B"}:
            raise CheckpointFormatError(f"LoRA module {module} lacks lora_A or lora_B")
        a, b = parts["A"], parts["B"]
        rank = int(a.shape[0])
        if b.shape[1] != rank:
            raise CheckpointFormatError(
                f"LoRA module {module}: rank mismatch {tuple(a.shape)} / {tuple(b.shape)}"
            )
        module_alpha = _pattern_value(alpha_pattern, module, alpha)
        pairs[module] = LoraPair(module, a, b, lora_scale(module_alpha, rank, rslora=rslora))
    if not pairs:
        raise CheckpointFormatError("adapter holds no LoRA weights")
    return pairs


def _strip_to(name: str, marker: str) -> str | None:
    index = name.find(marker)
    return name[index + len(marker) :] if index >= 0 else None


def load_projector_state(path: Path, kind: str) -> dict[str, torch.Tensor]:
    """Projector tensors from ``non_lora_trainables.bin``, keyed as the projector module.

    ``base_model.model.model.mm_projector.0.weight`` becomes ``0.weight``. Any other
    non-LoRA tensor is refused (LLaVA-Rad trains only the projector outside the LoRA).
    """
    state = load_pickled_checkpoint(path)
    projector: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        suffix = _strip_to(key, "mm_projector.")
        if suffix is None:
            raise CheckpointFormatError(f"unexpected non-LoRA tensor {key!r}")
        projector[suffix] = tensor
    expected = (
        {"0.weight", "0.bias", "2.weight", "2.bias"} if kind == "mlp2x_gelu" else {"weight", "bias"}
    )
    if set(projector) != expected:
        raise CheckpointFormatError(f"projector keys {sorted(projector)} do not match {kind}")
    return projector


def extract_trunk_state(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The timm trunk tensors of an open_clip checkpoint (``module.visual.trunk.*``)."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointFormatError("vision checkpoint holds no state dict")
    trunk: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        for prefix in TRUNK_PREFIXES:
            if key.startswith(prefix):
                trunk[key[len(prefix) :]] = tensor
                break
    if not trunk:
        raise CheckpointFormatError("no visual.trunk.* tensors in the vision checkpoint")
    return trunk


def dinov2_spec_from_trunk(
    trunk: dict[str, torch.Tensor],
    *,
    timm_model_name: str,
    image_size: int | None,
    select_layer: int,
    drop_cls: bool,
) -> VisionSpec:
    """Infer the tower geometry from tensor shapes (checked against the open_clip json)."""
    if "reg_token" in trunk:
        raise CheckpointFormatError("DINOv2 trunks with register tokens are not supported")
    base_name = timm_model_name.split(".")[0]
    if "giant" in base_name:
        raise CheckpointFormatError("DINOv2 giant (SwiGLU MLP) is not supported")
    pos = trunk["pos_embed"]
    proj = trunk["patch_embed.proj.weight"]
    width = int(pos.shape[-1])
    patch = int(proj.shape[-1])
    grid = math.isqrt(int(pos.shape[1]) - 1)
    if grid * grid + 1 != int(pos.shape[1]):
        raise CheckpointFormatError(
            f"pos_embed of {pos.shape[1]} tokens is not CLS + a square grid"
        )
    if image_size is not None and image_size != grid * patch:
        raise CheckpointFormatError(f"json image_size {image_size} != checkpoint {grid * patch}")
    layers = len({k.split(".")[1] for k in trunk if k.startswith("blocks.")})
    known_width, known_heads = DINOV2_GEOMETRY.get(base_name, (0, 0))
    heads = known_heads if known_width == width else max(1, width // 64)
    return VisionSpec(
        kind="dinov2_vit",
        image_size=grid * patch,
        patch_size=patch,
        width=width,
        layers=layers,
        heads=heads,
        mlp_ratio=int(trunk["blocks.0.mlp.fc1.weight"].shape[0]) / width,
        in_channels=int(proj.shape[1]),
        select_layer=select_layer,
        drop_cls=drop_cls,
        final_norm=False,
        layerscale="blocks.0.ls1.gamma" in trunk,
        norm_eps=1e-6,
    )


def _tower_tensors(trunk: dict[str, torch.Tensor], spec: VisionSpec) -> dict[str, torch.Tensor]:
    needed = spec.block_count_needed
    kept: dict[str, torch.Tensor] = {}
    for key, tensor in trunk.items():
        head = key.split(".")[0]
        if head == "blocks" and int(key.split(".")[1]) >= needed:
            continue
        if head in ("norm",) and not spec.final_norm:
            continue
        if head in ("fc_norm", "head", "mask_token", "head_drop"):
            continue
        kept[f"vision.{key}"] = tensor
    return kept


def preprocess_from_openclip(config: dict[str, Any], size: int) -> PreprocessSpec:
    """Preprocessing of an open_clip model config (CLIP defaults when it has no block)."""
    block = config.get("preprocess_cfg") or config.get("vision_cfg", {}).get("preprocess_cfg")
    if not block:
        return PreprocessSpec(
            channels=3, size=size, resample="bicubic", mean=list(CLIP_MEAN), std=list(CLIP_STD)
        )
    interpolation = str(block.get("interpolation", "bicubic"))
    if interpolation not in ("bicubic", "bilinear", "lanczos"):
        raise CheckpointFormatError(f"unsupported interpolation {interpolation!r}")
    if block.get("resize_mode", "shortest") != "shortest":
        raise CheckpointFormatError(f"unsupported resize_mode {block.get('resize_mode')!r}")
    return PreprocessSpec(
        channels=3,
        size=size,
        resample=interpolation,
        mean=[float(v) for v in block.get("mean", CLIP_MEAN)],
        std=[float(v) for v in block.get("std", CLIP_STD)],
    )


def _check_llava_config(config: dict[str, Any]) -> tuple[str, int, bool]:
    kind = str(config.get("mm_projector_type", "linear"))
    if kind not in ("mlp2x_gelu", "linear"):
        raise CheckpointFormatError(f"unsupported mm_projector_type {kind!r}")
    if config.get("mm_use_im_start_end", False) or config.get("mm_use_im_patch_token", False):
        raise CheckpointFormatError("image start/end or patch tokens are not supported")
    feature = config.get("mm_vision_select_feature", "patch")
    if feature not in ("patch", "cls_patch"):
        raise CheckpointFormatError(f"unsupported mm_vision_select_feature {feature!r}")
    return kind, int(config.get("mm_vision_select_layer", -2)), feature == "patch"


def merge_lora_into_base(
    base_dir: Path,
    lora: dict[str, LoraPair],
    out_dir: Path,
    *,
    dtype: torch.dtype,
    progress: Progress | None = None,
    allow_unsafe_pickle: bool = False,
) -> int:
    """Stream the base weights, add each LoRA delta, write safetensors shards to ``out_dir``.

    Returns
    -------
    int
        Number of merged modules (all LoRA modules must find their base weight).
    """
    files = weight_files(base_dir)
    writer = ShardedSafetensorsWriter(out_dir)
    merged: set[str] = set()
    for number, path in enumerate(files):
        report(progress, f"merging LoRA into {path.name}", 0.3 + 0.5 * number / len(files))
        for name, tensor in iter_weight_tensors(path, allow_unsafe_pickle=allow_unsafe_pickle):
            if name.endswith("rotary_emb.inv_freq"):
                continue
            module = name[: -len(".weight")] if name.endswith(".weight") else None
            if module is not None and module in lora:
                pair = lora[module]
                if tuple(tensor.shape) != (pair.b.shape[0], pair.a.shape[1]):
                    raise CheckpointFormatError(
                        f"LoRA shape does not fit {name} {tuple(tensor.shape)}"
                    )
                tensor = tensor.to(torch.float32) + pair.delta()
                merged.add(module)
            writer.add(name, tensor.to(dtype))
    writer.close()
    unused = sorted(set(lora) - merged)
    if unused:
        raise CheckpointFormatError(f"LoRA modules without base weights: {unused[:5]}")
    return len(merged)


class UntrustedCheckpointError(CheckpointFormatError):
    """The vision checkpoint needs full unpickling and the caller did not opt in."""


def load_vision_checkpoint(path: Path, *, trust_pickle: bool) -> Any:
    """Load the open_clip checkpoint, refusing full unpickling unless ``trust_pickle``.

    Raises
    ------
    UntrustedCheckpointError
        When the weights-only loader refuses the file and ``trust_pickle`` is false; the
        one-line message names the ``--trust-checkpoint-pickle`` option.
    """
    try:
        return load_pickled_checkpoint(path, allow_unsafe_pickle=trust_pickle)
    except pickle.UnpicklingError as exc:
        found = str(exc).splitlines()[0] if str(exc) else "an object"
        raise UntrustedCheckpointError(
            f"{path.name} holds pickled objects outside torch's weights-only allow-list "
            f"({found[:160]}); if this file comes from a trusted source, import again with "
            "--trust-checkpoint-pickle (full unpickling of this file only)"
        ) from exc


def import_llava_rad(
    llava_rad_dir: Path,
    base_dir: Path,
    out_dir: Path,
    *,
    progress: Progress | None = None,
    llm_dtype: str = "float16",
    version: str = "1.0.0",
    export_onnx: bool = True,
    overwrite: bool = False,
    allow_unsafe_pickle: bool = False,
    trust_checkpoint_pickle: bool = False,
) -> Path:
    """Build a LLaVA-Rad bundle.

    Parameters
    ----------
    llava_rad_dir
        Folder with ``config.json``, ``adapter_config.json``, ``adapter_model.bin``,
        ``non_lora_trainables.bin``, ``biomedclipcxr_518.json`` and
        ``biomedclipcxr_518_checkpoint.pt`` (as published on Hugging Face).
    base_dir
        Vicuna-7B-v1.5 in Hugging Face layout (config, weights, tokenizer).
    out_dir
        Bundle folder to create.
    progress
        Callback ``(message, fraction)``.
    llm_dtype
        Dtype of the merged LLM weights (the published evaluation ran in float16).
    version
        Bundle version string.
    export_onnx
        Export ``encoder.onnx`` (disable only for quick experiments).
    overwrite
        Replace an existing bundle folder.
    allow_unsafe_pickle
        Permit full unpickling of every ``.bin``/``.pt`` file that the weights-only loader
        refuses (only for files from a trusted source).
    trust_checkpoint_pickle
        Permit full unpickling of ``biomedclipcxr_518_checkpoint.pt`` alone: an open_clip
        training checkpoint can hold objects outside torch's weights-only allow-list.
        Unpickling runs code from the file, so only for a file from a trusted source.

    Returns
    -------
    Path
        The bundle folder.
    """
    llava_rad_dir, base_dir, out_dir = Path(llava_rad_dir), Path(base_dir), Path(out_dir)
    report(progress, "reading LLaVA-Rad configuration", 0.0)
    llava_config = read_json(llava_rad_dir / "config.json")
    projector_kind, select_layer, drop_cls = _check_llava_config(llava_config)
    base_config = read_json(base_dir / "config.json")
    if base_config.get("model_type") != "llama":
        raise CheckpointFormatError(
            f"base model_type {base_config.get('model_type')!r}, expected llama"
        )
    for key in ("hidden_size", "vocab_size", "num_hidden_layers"):
        if key in llava_config and llava_config[key] != base_config.get(key):
            raise CheckpointFormatError(
                f"{key}: LLaVA-Rad {llava_config[key]} != base {base_config.get(key)}"
            )
    open_clip_config = read_json(llava_rad_dir / VISION_CONFIG_NAME)
    vision_cfg = open_clip_config.get("vision_cfg", {})
    timm_name = str(vision_cfg.get("timm_model_name", ""))
    if "dinov2" not in timm_name:
        raise CheckpointFormatError(f"vision tower {timm_name!r} is not a timm DINOv2 ViT")

    report(progress, "loading vision tower", 0.05)
    checkpoint = load_vision_checkpoint(
        llava_rad_dir / VISION_CHECKPOINT_NAME,
        trust_pickle=allow_unsafe_pickle or trust_checkpoint_pickle,
    )
    trunk = extract_trunk_state(checkpoint)
    del checkpoint
    vision = dinov2_spec_from_trunk(
        trunk,
        timm_model_name=timm_name,
        image_size=vision_cfg.get("image_size"),
        select_layer=select_layer,
        drop_cls=drop_cls,
    )
    mm_hidden = llava_config.get("mm_hidden_size", vision.width)
    if mm_hidden != vision.width:
        raise CheckpointFormatError(f"mm_hidden_size {mm_hidden} != tower width {vision.width}")
    hidden = int(base_config["hidden_size"])
    projector = ProjectorSpec(kind=projector_kind, in_dim=vision.width, out_dim=hidden)

    report(progress, "loading projector", 0.1)
    projector_state = load_projector_state(
        llava_rad_dir / "non_lora_trainables.bin", projector_kind
    )
    encoder = build_image_encoder(vision, projector)
    state = _tower_tensors(trunk, vision)
    state.update({f"projector.{k}": v for k, v in projector_state.items()})
    load_encoder_state(encoder, state)

    report(progress, "reading LoRA adapter", 0.2)
    lora = load_lora_adapter(llava_rad_dir, allow_unsafe_pickle=allow_unsafe_pickle)
    tokenizer_src = llava_rad_dir if _has_tokenizer(llava_rad_dir) else base_dir
    tokenizer = load_tokenizer_from(tokenizer_src)
    tokenizer_settings = tokenizer_settings_from(tokenizer_src)
    dtype = resolve_dtype(llm_dtype)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.llm-", dir=out_dir.parent))
    try:
        merge_lora_into_base(
            base_dir,
            lora,
            staged,
            dtype=dtype,
            progress=progress,
            allow_unsafe_pickle=allow_unsafe_pickle,
        )
        write_llama_config(base_config, staged, dtype=llm_dtype)
        manifest = BundleManifest(
            name="llava-rad",
            version=version,
            architecture="llava-rad",
            vision=vision,
            projector=projector,
            preprocess=preprocess_from_openclip(open_clip_config, vision.image_size),
            prompt=llava_rad_prompt_spec(),
            generation=GenerationSpec(temperature=0.0, top_p=1.0, max_new_tokens=256),
            tokenizer=tokenizer_settings,
            llm_dtype=llm_dtype,
            num_image_tokens=vision.num_output_tokens,
            licence=LICENCE,
            intended_use=INTENDED_USE,
            synthetic=False,
            device_uid=new_device_uid(),
            output_sections="findings",
        )
        report(progress, "writing bundle", 0.8)
        return write_bundle(
            out_dir,
            manifest,
            encoder,
            staged,
            tokenizer,
            export_onnx=export_onnx,
            overwrite=overwrite,
            move_llm=True,
            progress=scaled_progress(progress, 0.8, 1.0),
        )
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()


__all__ = [
    "UntrustedCheckpointError",
    "load_vision_checkpoint",
    "INTENDED_USE",
    "LICENCE",
    "LoraPair",
    "dinov2_spec_from_trunk",
    "extract_trunk_state",
    "import_llava_rad",
    "load_lora_adapter",
    "load_projector_state",
    "lora_scale",
    "merge_lora_into_base",
    "preprocess_from_openclip",
]
