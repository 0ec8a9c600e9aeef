"""Import CXR-LLaVA v2 (HF ``ECOFRI/CXR-LLAVA-v2`` layout) without running its remote code.

The published safetensors hold one flat state dict: ``vision_tower.*`` (an open_clip
``VisionTransformer`` with one input channel), ``mm_projector.{weight,bias}`` (one Linear),
``llama.*`` (a ``LlamaModel``) and ``lm_head.weight``. ``config.json`` carries
``clip_vision_cfg``, ``image_preprocess_cfg``, the ``llama`` config dict and
``mm_projector_dim``. The LLM part is re-keyed for ``LlamaForCausalLM`` (``llama.*`` →
``model.*``) and streamed into safetensors shards.
"""

from __future__ import annotations

import shutil
import tempfile
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
    load_tokenizer_from,
    read_json,
    report,
    scaled_progress,
    tokenizer_settings_from,
    weight_files,
    write_llama_config,
)
from workers.inference.manifest import (
    BundleManifest,
    GenerationSpec,
    PreprocessSpec,
    ProjectorSpec,
    VisionSpec,
    new_device_uid,
)
from workers.inference.prompts import cxr_llava_prompt_spec

LICENCE = (
    "CC BY-NC 4.0 (CXR-LLaVA weights: non-commercial use, attribution) and the LLaMA 2 "
    "Community License (base LLM). Research use only; not for clinical use."
)
INTENDED_USE = (
    "Research use only. Drafts a free-text chest radiograph report (findings and impression, "
    "covering atelectasis, cardiomegaly, consolidation, pulmonary edema, pleural effusion and "
    "pneumothorax) for radiologist review; not a medical device and not for clinical decisions."
)
DEFAULT_TOP_K = 50  # transformers' default, in force upstream unless generation_config sets one
DEFAULT_MAX_NEW_TOKENS = 512
_VISION_SKIP = ("proj", "attn_pool", "attn_pool_contrastive")


def openclip_spec_from_config(
    clip_cfg: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> VisionSpec:
    """Vision spec from ``clip_vision_cfg`` (open_clip ``CLIPVisionCfg`` defaults), checked
    against the tensor shapes.

    Parameters
    ----------
    clip_cfg
        The ``clip_vision_cfg`` block of ``config.json``.
    tensors
        ``vision_tower.*`` tensors with the prefix removed.
    """
    if clip_cfg.get("attentional_pool", False):
        raise CheckpointFormatError("attentional pooling towers are not supported")
    if clip_cfg.get("timm_model_name"):
        raise CheckpointFormatError("timm-based CLIP towers are not supported by this importer")
    width = int(clip_cfg.get("width", 768))
    layers = int(clip_cfg.get("layers", 12))
    patch = int(clip_cfg.get("patch_size", 16))
    image_size = int(clip_cfg.get("image_size", 224))
    head_width = int(clip_cfg.get("head_width", 64))
    pool_type = clip_cfg.get("pool_type", "tok")
    if pool_type not in ("tok", "avg", "none"):
        raise CheckpointFormatError(f"unsupported pool_type {pool_type!r}")
    norm_kwargs = clip_cfg.get("norm_kwargs") or {}
    act_kwargs = clip_cfg.get("act_kwargs") or {}
    activation = "gelu_tanh" if act_kwargs.get("approximate") == "tanh" else "gelu"
    conv = tensors.get("conv1.weight")
    pos = tensors.get("positional_embedding")
    if conv is None or pos is None:
        raise CheckpointFormatError("vision_tower.conv1.weight / positional_embedding missing")
    grid = image_size // patch
    if tuple(conv.shape) != (width, int(conv.shape[1]), patch, patch) or tuple(pos.shape) != (
        grid * grid + 1,
        width,
    ):
        raise CheckpointFormatError(
            f"vision tensors {tuple(conv.shape)}, {tuple(pos.shape)} do not match clip_vision_cfg"
        )
    found_layers = len({k.split(".")[2] for k in tensors if k.startswith("transformer.resblocks.")})
    if found_layers != layers:
        raise CheckpointFormatError(
            f"clip_vision_cfg says {layers} layers, checkpoint has {found_layers}"
        )
    return VisionSpec(
        kind="openclip_vit",
        image_size=image_size,
        patch_size=patch,
        width=width,
        layers=layers,
        heads=width // head_width,
        mlp_ratio=float(clip_cfg.get("mlp_ratio", 4.0)),
        in_channels=int(conv.shape[1]),
        select_layer=-1,
        drop_cls=pool_type != "none",
        final_norm=not clip_cfg.get("final_ln_after_pool", False),
        layerscale=clip_cfg.get("ls_init_value") is not None,
        norm_eps=float(norm_kwargs.get("eps", 1e-5)),
        activation=activation,
        no_ln_pre=bool(clip_cfg.get("no_ln_pre", False)),
    )


def _stat_list(value: Any, name: str) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)]
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) for v in value)
    ):
        return [float(v) for v in value]
    raise CheckpointFormatError(
        f"image_preprocess_cfg.{name} must be a number or a list of numbers"
    )


def import_cxr_llava(
    src_dir: Path,
    out_dir: Path,
    *,
    progress: Progress | None = None,
    version: str = "2.0.0",
    export_onnx: bool = True,
    overwrite: bool = False,
) -> Path:
    """Build a CXR-LLaVA bundle from the published v2 folder.

    Parameters
    ----------
    src_dir
        Folder with ``config.json``, ``model-*-of-*.safetensors`` (and index), tokenizer files
        and ``generation_config.json``.
    out_dir
        Bundle folder to create.
    progress
        Callback ``(message, fraction)``.
    version
        Bundle version string.
    export_onnx
        Export ``encoder.onnx``.
    overwrite
        Replace an existing bundle folder.

    Returns
    -------
    Path
        The bundle folder.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    report(progress, "reading CXR-LLaVA configuration", 0.0)
    config = read_json(src_dir / "config.json")
    for key in ("clip_vision_cfg", "image_preprocess_cfg", "llama", "mm_projector_dim"):
        if key not in config:
            raise CheckpointFormatError(f"config.json lacks {key!r}")
    llama_cfg: dict[str, Any] = dict(config["llama"])
    hidden = int(llama_cfg["hidden_size"])
    llm_dtype = "bfloat16"  # upstream casts the LLM to bf16 whatever the stored dtype
    target_dtype = torch.bfloat16

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.llm-", dir=out_dir.parent))
    try:
        vision_tensors, projector_tensors = _split_weights(src_dir, staged, target_dtype, progress)
        vision = openclip_spec_from_config(config["clip_vision_cfg"], vision_tensors)
        projector_dim = int(config["mm_projector_dim"])
        if projector_dim != vision.width:
            raise CheckpointFormatError(
                f"mm_projector_dim {projector_dim} != tower width {vision.width}"
            )
        projector = ProjectorSpec(kind="linear", in_dim=projector_dim, out_dim=hidden)
        report(progress, "building image encoder", 0.7)
        encoder = build_image_encoder(vision, projector)
        state = {
            f"vision.{k}": v
            for k, v in vision_tensors.items()
            if k.split(".")[0] not in _VISION_SKIP
            and not (k.startswith("ln_post.") and not vision.final_norm)
        }
        state.update({f"projector.{k}": v for k, v in projector_tensors.items()})
        load_encoder_state(encoder, state)

        write_llama_config(llama_cfg, staged, dtype=llm_dtype)
        tokenizer = load_tokenizer_from(src_dir)
        preprocess_cfg = config["image_preprocess_cfg"]
        mean = _stat_list(preprocess_cfg.get("mean"), "mean")
        std = _stat_list(preprocess_cfg.get("std"), "std")
        manifest = BundleManifest(
            name="cxr-llava-v2",
            version=version,
            architecture="cxr-llava",
            vision=vision,
            projector=projector,
            preprocess=PreprocessSpec(
                channels=1,
                size=vision.image_size,
                resample="lanczos",
                mean=mean,
                std=std,
                crop_offset="floor",  # transformers' CLIPImageProcessor centre crop
            ),
            prompt=cxr_llava_prompt_spec(),
            generation=upstream_generation(src_dir),
            tokenizer=tokenizer_settings_from(src_dir),
            llm_dtype=llm_dtype,
            num_image_tokens=vision.num_output_tokens,
            licence=LICENCE,
            intended_use=INTENDED_USE,
            synthetic=False,
            device_uid=new_device_uid(),
            output_sections="findings_impression",
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


def _split_weights(
    src_dir: Path, llm_dir: Path, dtype: torch.dtype, progress: Progress | None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Stream the flat checkpoint: LLM tensors to ``llm_dir`` shards, the rest returned."""
    files = weight_files(src_dir)
    writer = ShardedSafetensorsWriter(llm_dir)
    vision: dict[str, torch.Tensor] = {}
    projector: dict[str, torch.Tensor] = {}
    for number, path in enumerate(files):
        report(progress, f"converting {path.name}", 0.05 + 0.6 * number / len(files))
        for name, tensor in iter_weight_tensors(path):
            if name.startswith("vision_tower."):
                vision[name[len("vision_tower.") :]] = tensor
            elif name.startswith("mm_projector."):
                projector[name[len("mm_projector.") :]] = tensor
            elif name.startswith("llama."):
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                writer.add("model." + name[len("llama.") :], tensor.to(dtype))
            elif name == "lm_head.weight":
                writer.add(name, tensor.to(dtype))
            else:
                raise CheckpointFormatError(f"unexpected tensor {name!r}")
    writer.close()
    if set(projector) != {"weight", "bias"}:
        raise CheckpointFormatError(
            f"mm_projector tensors {sorted(projector)}, expected weight and bias"
        )
    if not vision:
        raise CheckpointFormatError("no vision_tower.* tensors found")
    return vision, projector


def upstream_generation(src_dir: Path) -> GenerationSpec:
    """The decoding upstream's ``write_radiologic_report`` runs with.

    Temperature 0.2 and top-p 0.8 are passed by the upstream call; everything else comes from
    the model's ``generation_config.json``, which upstream hands to ``generate``: ``top_k``
    (``transformers``' 50 when absent) and ``repetition_penalty`` (1.0 when absent).
    """
    path = src_dir / "generation_config.json"
    config = read_json(path) if path.is_file() else {}
    top_k = config.get("top_k", DEFAULT_TOP_K)
    penalty = config.get("repetition_penalty", 1.0)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise CheckpointFormatError("generation_config.json: top_k must be an integer >= 0")
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or penalty <= 0:
        raise CheckpointFormatError(
            "generation_config.json: repetition_penalty must be a number > 0"
        )
    return GenerationSpec(
        temperature=0.2,
        top_p=0.8,
        top_k=top_k,
        repetition_penalty=float(penalty),
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
    )


__all__ = [
    "INTENDED_USE",
    "LICENCE",
    "import_cxr_llava",
    "openclip_spec_from_config",
    "upstream_generation",
]
