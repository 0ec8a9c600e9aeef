"""Train the synthetic demonstration model and write it as a bundle.

The model has the LLaVA-Rad shape at toy scale: a DINOv2-layout ViT (hidden state ``-2``, CLS
dropped, no final norm) -> ``mlp2x_gelu`` projector -> ``LlamaForCausalLM``, trained end to end
on phantom radiographs and their templated reports with the ``radnode_plain`` prompt. An
auxiliary multi-label head on the vision tokens (not part of the bundle) speeds up learning of
the image features; the language model learns to read them through the projector.

Training is deterministic for a given seed and thread count.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.inference.bundle import write_bundle
from workers.inference.encoder import ImageEncoder, build_image_encoder
from workers.inference.llm import PromptTokens, tokenize_prompt
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
from workers.inference.prompts import render_prompt, split_prompt
from workers.inference.synth.data import (
    AUX_TARGETS,
    SampleSet,
    aux_target_vector,
    normalise_batch,
    render_samples,
)
from workers.inference.synth.phantom import sample_labels
from workers.inference.synth.reports import INDICATIONS, write_report
from workers.inference.synth.tokenizer import SPACE_MARK, build_tokenizer, to_transformers
from workers.inference.vision import init_vision_weights

log = logging.getLogger(__name__)

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
_DECISIVE_WORDS = frozenset({"left", "right", "bilateral", "small", "large", "no", "normal", "enlarged"})

TrainingProgress = Callable[[int, int, float], None]
"""Callback ``(step, total_steps, loss)`` called after every optimisation step."""


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
    steps: int = 500
    vision_warmup_steps: int = 150
    language_warmup_steps: int = 150
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
    steps=6,
    vision_warmup_steps=2,
    language_warmup_steps=2,
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
        projector=ProjectorSpec(kind="mlp2x_gelu", in_dim=config.vision_width, out_dim=config.hidden_size),
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


def _tokenizer_corpus(config: SynthConfig, seed: int) -> list[str]:
    rng = np.random.default_rng([seed, 0x70C])
    corpus = [write_report(sample_labels(rng), rng).text for _ in range(config.tokenizer_corpus_reports)]
    prompt_texts = [render_prompt(SYNTH_PROMPT, None)]
    prompt_texts += [render_prompt(SYNTH_PROMPT, indication) for indication in INDICATIONS]
    return corpus + prompt_texts * 20


def _build_llm(config: SynthConfig, vocab_size: int, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    llm_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.llm_layers,
        num_attention_heads=config.llm_heads,
        num_key_value_heads=config.llm_heads,
        max_position_embeddings=config.max_positions,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(llm_config)


@dataclass
class _Batch:
    """Spliced training sequences: ``before`` + image tokens + ``inputs_after``."""

    pixels: torch.Tensor
    inputs_after: torch.Tensor
    labels_after: torch.Tensor
    weights_after: torch.Tensor
    attention: torch.Tensor
    aux: torch.Tensor
    before: torch.Tensor


@dataclass
class _TextBatch:
    """Report text without an image (language warm-up)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    attention: torch.Tensor


@dataclass
class _ImageBatch:
    """Pixels and auxiliary targets (vision warm-up)."""

    pixels: torch.Tensor
    aux: torch.Tensor


_Row = tuple[list[int], list[int], list[float]]


def _pad(rows: list[_Row], pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Right-pad ``(context, target, target_weights)`` rows.

    Returns ``inputs``, ``labels`` (-100 outside the target; a causal LM shifts them itself),
    per-label ``weights`` and the ``attention`` mask.
    """
    longest = max(len(c) + len(t) for c, t, _ in rows)
    inputs = np.full((len(rows), longest), pad, dtype=np.int64)
    labels = np.full((len(rows), longest), -100, dtype=np.int64)
    weights = np.zeros((len(rows), longest), dtype=np.float32)
    attention = np.zeros((len(rows), longest), dtype=np.int64)
    for r, (context, target, target_weights) in enumerate(rows):
        sequence = context + target
        inputs[r, : len(sequence)] = sequence
        attention[r, : len(sequence)] = 1
        labels[r, len(context) : len(sequence)] = target
        weights[r, len(context) : len(sequence)] = target_weights
    return inputs, labels, weights, attention


def _weighted_lm_loss(
    llm: Any,
    attention: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    *,
    inputs_embeds: torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy over labelled positions only (the LM head runs on those)."""
    hidden = llm.model(
        input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention
    ).last_hidden_state
    targets = labels[:, 1:]
    selected = targets != -100
    logits = llm.lm_head(hidden[:, :-1][selected])
    token_weights = weights[:, 1:][selected]
    losses = nn.functional.cross_entropy(logits, targets[selected], reduction="none")
    return (losses * token_weights).sum() / token_weights.sum()


class _Sequencer:
    """Turns samples into training sequences with the bundle's own prompt code."""

    def __init__(self, tokenizer: Any, config: SynthConfig, spec: PreprocessSpec) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.spec = spec
        self.eos = int(tokenizer.eos_token_id)
        self.pad = int(tokenizer.pad_token_id)
        self._prompt_cache: dict[str | None, PromptTokens] = {}

    def prompt(self, indication: str | None) -> PromptTokens:
        """Token ids around the image slot, exactly as the loaded bundle builds them."""
        if indication not in self._prompt_cache:
            before, after = split_prompt(render_prompt(SYNTH_PROMPT, indication), SYNTH_PROMPT.image_token)
            self._prompt_cache[indication] = tokenize_prompt(self.tokenizer, before, after)
        return self._prompt_cache[indication]

    def _indication(self, rng: np.random.Generator) -> str | None:
        if rng.random() < self.config.indication_rate:
            return INDICATIONS[int(rng.integers(0, len(INDICATIONS)))]
        return None

    def _target(self, labels: Any, rng: np.random.Generator) -> tuple[list[int], list[float]]:
        """Report ids + EOS, and loss weights that stress the tokens carrying the findings.

        The first token of every sentence (where a sentence turns positive or negative) and
        side/size words get ``decision_weight``; phrasing tokens get 1.
        """
        report = write_report(labels, rng).text
        ids = [*self.tokenizer(report, add_special_tokens=False)["input_ids"], self.eos]
        pieces = self.tokenizer.convert_ids_to_tokens(ids)
        weights: list[float] = []
        sentence_start = True
        for piece in pieces:
            word = piece.replace(SPACE_MARK, "").strip(".,:").lower()
            decisive = sentence_start or word in _DECISIVE_WORDS
            weights.append(self.config.decision_weight if decisive else 1.0)
            sentence_start = piece.endswith((".", ":"))
        return ids, weights

    def text_batch(self, rng: np.random.Generator) -> _TextBatch:
        """Reports of freshly sampled labels after the prompt, with no image in between."""
        rows = []
        for _ in range(self.config.batch_size):
            prompt = self.prompt(self._indication(rng))
            target, weights = self._target(sample_labels(rng), rng)
            rows.append((list(prompt.before) + list(prompt.after), target, weights))
        inputs, labels, weights_arr, attention = _pad(rows, self.pad)
        return _TextBatch(
            inputs=torch.from_numpy(inputs),
            labels=torch.from_numpy(labels),
            weights=torch.from_numpy(weights_arr),
            attention=torch.from_numpy(attention),
        )

    def image_batch(self, samples: SampleSet, indices: np.ndarray) -> _ImageBatch:
        """Normalised pixels and auxiliary targets."""
        aux = np.stack([aux_target_vector(samples.labels[int(i)]) for i in indices])
        return _ImageBatch(
            pixels=torch.from_numpy(normalise_batch(samples.images[indices], self.spec)),
            aux=torch.from_numpy(aux),
        )

    def batch(self, samples: SampleSet, indices: np.ndarray, rng: np.random.Generator) -> _Batch:
        """Image, prompt and report of each sample, spliced like the bundle does at inference."""
        rows: list[_Row] = []
        befores: set[tuple[int, ...]] = set()
        for index in indices:
            prompt = self.prompt(self._indication(rng))
            befores.add(prompt.before)
            target, weights = self._target(samples.labels[int(index)], rng)
            rows.append((list(prompt.after), target, weights))
        if len(befores) != 1:
            raise RuntimeError("training expects the same text before the image for every prompt")
        inputs, labels, weights_arr, attention = _pad(rows, self.pad)
        images = self.image_batch(samples, indices)
        return _Batch(
            pixels=images.pixels,
            inputs_after=torch.from_numpy(inputs),
            labels_after=torch.from_numpy(labels),
            weights_after=torch.from_numpy(weights_arr),
            attention=torch.from_numpy(attention),
            aux=images.aux,
            before=torch.tensor(next(iter(befores)), dtype=torch.long),
        )


class _SynthModel(nn.Module):
    """Encoder + LLM + auxiliary image head, for training only."""

    def __init__(self, encoder: ImageEncoder, llm: Any, num_tokens: int, width: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.llm = llm
        self.aux_head = nn.Linear(num_tokens * width, len(AUX_TARGETS))

    def aux_loss(self, batch: _ImageBatch) -> torch.Tensor:
        """Multi-label loss of the auxiliary head on the vision tokens."""
        logits = self.aux_head(self.encoder.vision(batch.pixels).flatten(1))
        return nn.functional.binary_cross_entropy_with_logits(logits, batch.aux)

    def language_loss(self, batch: _TextBatch) -> torch.Tensor:
        """Causal LM loss on report text alone."""
        return _weighted_lm_loss(
            self.llm, batch.attention, batch.labels, batch.weights, input_ids=batch.inputs
        )

    def forward(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder.vision(batch.pixels)
        image = self.encoder.projector(features)
        aux_logits = self.aux_head(features.flatten(1))
        embed = self.llm.get_input_embeddings()
        size = image.shape[0]
        before = embed(batch.before).unsqueeze(0).expand(size, -1, -1)
        after = embed(batch.inputs_after)
        inputs = torch.cat([before, image, after], dim=1)
        prefix = before.shape[1] + image.shape[1]
        attention = torch.cat(
            [torch.ones((size, prefix), dtype=batch.attention.dtype), batch.attention], dim=1
        )
        labels = torch.cat(
            [torch.full((size, prefix), -100, dtype=torch.long), batch.labels_after], dim=1
        )
        weights = torch.cat([torch.zeros((size, prefix)), batch.weights_after], dim=1)
        lm_loss = _weighted_lm_loss(self.llm, attention, labels, weights, inputs_embeds=inputs)
        aux_loss = nn.functional.binary_cross_entropy_with_logits(aux_logits, batch.aux)
        return lm_loss, aux_loss


def _learning_rate(step: int, steps: int, config: SynthConfig) -> float:
    """Linear warm-up then cosine decay to a tenth of the peak."""
    warmup = min(config.warmup_steps, max(1, steps // 4))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass
class _Phase:
    """One stage of training: which parameters move and how a step's loss is computed."""

    name: str
    steps: int
    parameters: list[nn.Parameter]
    loss: Callable[[int], tuple[torch.Tensor, dict[str, float]]]


def _run_phase(
    phase: _Phase,
    config: SynthConfig,
    *,
    offset: int,
    total: int,
    progress: TrainingProgress | None,
    history: dict[str, list[float]],
) -> None:
    if phase.steps <= 0:
        return
    decay = [p for p in phase.parameters if p.ndim >= 2]
    no_decay = [p for p in phase.parameters if p.ndim < 2]
    optimiser = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=(0.9, 0.98),
    )
    for step in range(phase.steps):
        for group in optimiser.param_groups:
            group["lr"] = _learning_rate(step, phase.steps, config)
        loss, parts = phase.loss(step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(phase.parameters, 1.0)
        optimiser.step()
        for key, value in parts.items():
            history.setdefault(f"{phase.name}.{key}", []).append(value)
        if progress is not None:
            progress(offset + step + 1, total, float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == phase.steps:
            summary = " ".join(f"{k} {v:.4f}" for k, v in parts.items())
            log.info("synth %s step %d/%d %s", phase.name, step + 1, phase.steps, summary)


def _seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train_synth_model(
    *,
    seed: int = 0,
    config: SynthConfig = SynthConfig(),
    progress: TrainingProgress | None = None,
) -> tuple[BundleManifest, ImageEncoder, Any, Any, dict[str, Any]]:
    """Train the synthetic model in memory.

    Parameters
    ----------
    seed
        Seed of data, initialisation and batching.
    config
        Model size and schedule.
    progress
        Called after every step with ``(step, total_steps, loss)``.

    Returns
    -------
    tuple
        ``(manifest, encoder, llm, tokenizer, record)``; ``record`` describes the run.
    """
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    _seed_everything(seed, config.threads)
    try:
        manifest = build_manifest(config, seed)
        tokenizer = to_transformers(
            build_tokenizer(_tokenizer_corpus(config, seed), merge_vocab_size=config.merge_vocab_size)
        )
        spec = manifest.preprocess
        data_started = time.perf_counter()
        seeds = [seed * 1_000_003 + i for i in range(config.train_images)]
        samples = render_samples(
            seeds,
            spec,
            large_size=config.large_render_size,
            large_fraction=config.large_render_fraction,
            choice_seed=seed,
        )
        data_seconds = time.perf_counter() - data_started

        encoder = build_image_encoder(manifest.vision, manifest.projector)
        generator = torch.Generator().manual_seed(seed)
        init_vision_weights(encoder.vision, generator=generator)
        llm = _build_llm(config, len(tokenizer), tokenizer)
        model = _SynthModel(encoder, llm, manifest.num_image_tokens, config.vision_width)
        model.train()

        sequencer = _Sequencer(tokenizer, config, spec)
        rng = np.random.default_rng([seed, 0xBA7C])
        cursor = {"order": rng.permutation(len(samples)), "at": 0}

        def next_indices() -> np.ndarray:
            order, at = cursor["order"], int(cursor["at"])
            if at + config.batch_size > len(order):
                order, at = rng.permutation(len(samples)), 0
                cursor["order"] = order
            cursor["at"] = at + config.batch_size
            return np.asarray(order[at : at + config.batch_size])

        def language_loss(_: int) -> tuple[torch.Tensor, dict[str, float]]:
            loss = model.language_loss(sequencer.text_batch(rng))
            return loss, {"lm_loss": float(loss.detach())}

        def vision_loss(_: int) -> tuple[torch.Tensor, dict[str, float]]:
            loss = model.aux_loss(sequencer.image_batch(samples, next_indices()))
            return loss, {"aux_loss": float(loss.detach())}

        def joint_loss(_: int) -> tuple[torch.Tensor, dict[str, float]]:
            lm_loss, aux_loss = model(sequencer.batch(samples, next_indices(), rng))
            return lm_loss + config.aux_weight * aux_loss, {
                "lm_loss": float(lm_loss.detach()),
                "aux_loss": float(aux_loss.detach()),
            }

        phases = [
            _Phase("language", config.language_warmup_steps, list(llm.parameters()), language_loss),
            _Phase(
                "vision",
                config.vision_warmup_steps,
                [*encoder.vision.parameters(), *model.aux_head.parameters()],
                vision_loss,
            ),
            _Phase("joint", config.steps, list(model.parameters()), joint_loss),
        ]
        total_steps = sum(p.steps for p in phases)
        history: dict[str, list[float]] = {}
        train_started = time.perf_counter()
        offset = 0
        for phase in phases:
            _run_phase(phase, config, offset=offset, total=total_steps, progress=progress, history=history)
            offset += phase.steps
        train_seconds = time.perf_counter() - train_started
    finally:
        torch.set_num_threads(previous_threads)
    encoder.eval()
    llm.eval()
    parameters = {
        "vision": sum(p.numel() for p in encoder.vision.parameters()),
        "projector": sum(p.numel() for p in encoder.projector.parameters()),
        "llm": sum(p.numel() for p in llm.parameters()),
    }
    parameters["total"] = sum(parameters.values())
    record: dict[str, Any] = {
        "seed": seed,
        "config": asdict(config),
        "parameters": parameters,
        "vocab_size": len(tokenizer),
        "final_losses": {k: round(float(np.mean(v[-10:])), 4) for k, v in history.items()},
        "steps": {p.name: p.steps for p in phases},
        "data_seconds": round(data_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "torch_threads": config.threads,
        "torch_version": torch.__version__,
        "notice": SYNTH_NOTICE,
    }
    return manifest, encoder, llm, tokenizer, record


def synthesize_demo_bundle(
    out_dir: Path | str,
    *,
    seed: int = 0,
    progress: TrainingProgress | None = None,
    config: SynthConfig | None = None,
    export_onnx: bool = True,
    overwrite: bool = True,
) -> Path:
    """Train the synthetic demonstration model and write it as a bundle.

    Parameters
    ----------
    out_dir
        Bundle folder to create (replaced when ``overwrite``).
    seed
        Training seed; the same seed and thread count give the same weights.
    progress
        Called after every step with ``(step, total_steps, loss)``.
    config
        Model size and schedule; defaults to :class:`SynthConfig` (the demo model).
    export_onnx
        Also export ``encoder.onnx``.
    overwrite
        Replace an existing bundle at ``out_dir``.

    Returns
    -------
    Path
        The bundle folder. ``llm/radnode_training.json`` records the run (times, losses,
        parameter counts).
    """
    config = config or SynthConfig()
    started = time.perf_counter()
    manifest, encoder, llm, tokenizer, record = train_synth_model(
        seed=seed, config=config, progress=progress
    )
    target = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix=".synth-llm-", dir=target.parent if target.parent.exists() else None) as tmp:
        llm_dir = Path(tmp) / "llm"
        llm.save_pretrained(str(llm_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(llm_dir))
        record["bundle_seconds"] = round(time.perf_counter() - started, 2)
        (llm_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        path = write_bundle(
            target,
            manifest,
            encoder,
            llm_dir,
            None,
            export_onnx=export_onnx,
            overwrite=overwrite,
            move_llm=True,
        )
    log.info(
        "synthetic bundle written: %s (%d parameters, %.1f s training)",
        path,
        record["parameters"]["total"],
        record["train_seconds"],
    )
    return path


def reduced_config(**changes: Any) -> SynthConfig:
    """:data:`REDUCED_CONFIG` with some fields changed (for tests)."""
    return replace(REDUCED_CONFIG, **changes)


__all__ = [
    "REDUCED_CONFIG",
    "SYNTH_NOTICE",
    "SYNTH_PROMPT",
    "SynthConfig",
    "TRAINING_RECORD",
    "TrainingProgress",
    "build_manifest",
    "deterministic_device_uid",
    "preprocess_spec",
    "reduced_config",
    "synthesize_demo_bundle",
    "train_synth_model",
    "vision_spec",
]
