"""Size, schedule and manifest of the synthetic demonstration model."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from workers.inference.manifest import (
    CLIP_MEAN,
    CLIP_STD,
    BundleManifest,
    GenerationSpec,
    PreprocessSpec,
    ProjectorSpec,
    PromptSpec,
    VisionSpec,
)

SYNTH_NOTICE = "Synthetic demonstration model. Not for clinical use."
SYNTH_NAME = "radnode-synth-cxr"
SYNTH_VERSION = "1.0.0"
TRAINING_RECORD = "radnode_training.json"
"""File written into the bundle's ``llm/`` folder describing how the model was trained."""

SYNTH_PROMPT = PromptSpec(
    style="radnode_plain",
    system="",
    question="Write the chest radiograph report.",
    question_with_indication="Write the chest radiograph report. Indication: {indication}",
)

# Words whose tokens decide what a sentence says about the image (weighted in the LM loss).
DECISIVE_WORDS = frozenset(
    {"left", "right", "bilateral", "small", "large", "no", "normal", "enlarged"}
)


@dataclass(frozen=True)
class SynthConfig:
    """Size and schedule of the synthetic model (defaults: the demo bundle)."""

    image_size: int = 96
    patch_size: int = 16
    vision_width: int = 96
    vision_layers: int = 5
    vision_heads: int = 4
    select_layer: int = -2
    hidden_size: int = 128
    llm_layers: int = 2
    llm_heads: int = 8
    intermediate_size: int = 352
    max_positions: int = 320
    train_images: int = 2400
    batch_size: int = 24
    vision_batch_size: int = 32
    vision_warmup_steps: int = 160
    language_warmup_steps: int = 150
    steps: int = 550
    finetune_steps: int = 50
    finetune_lr_scale: float = 0.3
    learning_rate: float = 2e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    aux_weight: float = 0.5
    decision_weight: float = 3.0
    indication_rate: float = 0.4
    large_render_fraction: float = 0.1
    large_render_size: int = 192
    merge_vocab_size: int = 640
    tokenizer_corpus_reports: int = 3000
    max_new_tokens: int = 128
    threads: int = 2


REDUCED_CONFIG = SynthConfig(
    vision_width=64,
    vision_layers=3,
    hidden_size=64,
    llm_layers=1,
    intermediate_size=128,
    train_images=48,
    batch_size=8,
    vision_batch_size=8,
    vision_warmup_steps=2,
    language_warmup_steps=2,
    steps=6,
    finetune_steps=2,
    warmup_steps=2,
    large_render_fraction=0.0,
    tokenizer_corpus_reports=400,
    max_new_tokens=48,
)
"""A few-second configuration for tests: same pipeline, tiny model, few steps."""


def vision_spec(config: SynthConfig) -> VisionSpec:
    """DINOv2-layout tower as LLaVA-Rad uses it (second-to-last block, CLS dropped)."""
    return VisionSpec(
        kind="dinov2_vit",
        image_size=config.image_size,
        patch_size=config.patch_size,
        width=config.vision_width,
        layers=config.vision_layers,
        heads=config.vision_heads,
        mlp_ratio=4.0,
        in_channels=3,
        select_layer=config.select_layer,
        drop_cls=True,
        final_norm=False,
        layerscale=True,
    )


def preprocess_spec(config: SynthConfig) -> PreprocessSpec:
    """open_clip-style preprocessing (RGB, bicubic, CLIP statistics) at the model size."""
    return PreprocessSpec(
        channels=3,
        size=config.image_size,
        resample="bicubic",
        mean=list(CLIP_MEAN),
        std=list(CLIP_STD),
    )


def deterministic_device_uid(seed: int, version: str = SYNTH_VERSION) -> str:
    """A stable ``2.25`` UID for the model trained with ``seed`` (same model, same UID)."""
    value = uuid.uuid5(uuid.NAMESPACE_URL, f"radnode:{SYNTH_NAME}:{version}:seed={seed}").int
    return f"2.25.{value}"


def build_manifest(config: SynthConfig, seed: int) -> BundleManifest:
    """The manifest of a synthetic bundle (``files`` are filled in by ``write_bundle``)."""
    vision = vision_spec(config)
    return BundleManifest(
        name=SYNTH_NAME,
        version=SYNTH_VERSION,
        architecture="radnode-synth",
        vision=vision,
        projector=ProjectorSpec(
            kind="mlp2x_gelu", in_dim=config.vision_width, out_dim=config.hidden_size
        ),
        preprocess=preprocess_spec(config),
        prompt=SYNTH_PROMPT,
        generation=GenerationSpec(
            temperature=0.0, top_p=1.0, max_new_tokens=config.max_new_tokens, repetition_penalty=1.0
        ),
        llm_dtype="float32",
        num_image_tokens=vision.num_output_tokens,
        licence=SYNTH_NOTICE,
        intended_use=SYNTH_NOTICE,
        synthetic=True,
        device_uid=deterministic_device_uid(seed),
        output_sections="findings_impression",
    )


def reduced_config(**changes: Any) -> SynthConfig:
    """:data:`REDUCED_CONFIG` with some fields changed (for tests)."""
    return replace(REDUCED_CONFIG, **changes)


__all__ = [
    "DECISIVE_WORDS",
    "REDUCED_CONFIG",
    "SYNTH_NAME",
    "SYNTH_NOTICE",
    "SYNTH_PROMPT",
    "SYNTH_VERSION",
    "SynthConfig",
    "TRAINING_RECORD",
    "build_manifest",
    "deterministic_device_uid",
    "preprocess_spec",
    "reduced_config",
    "vision_spec",
]
