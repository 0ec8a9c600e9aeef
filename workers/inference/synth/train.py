"""Train the synthetic demonstration model and write it as a bundle.

The model has the LLaVA-Rad shape at toy scale: a DINOv2-layout ViT (hidden state ``-2``, CLS
dropped, no final norm) -> ``mlp2x_gelu`` projector -> ``LlamaForCausalLM``, trained on phantom
radiographs and their templated reports with the ``radnode_plain`` prompt, in four stages:

1. ``vision``: the tower learns the findings through an auxiliary multi-label head on its
   tokens (the head is not part of the bundle);
2. ``language``: the language model learns the report language from text alone;
3. ``align``: projector and language model learn to read the frozen tower (LLaVA's recipe;
   the tower's tokens are computed once, which makes these steps cheap);
4. ``end_to_end``: all parameters together at a lower learning rate.

The language-model loss weights the tokens that carry a finding (sentence openings, sides,
sizes) more than phrasing tokens. Training is deterministic for a given seed and thread count.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.inference.bundle import write_bundle
from workers.inference.encoder import ImageEncoder, build_image_encoder
from workers.inference.manifest import BundleManifest
from workers.inference.prompts import render_prompt
from workers.inference.synth.batches import Sequencer, SynthTrainingModel
from workers.inference.synth.config import (
    REDUCED_CONFIG,
    SYNTH_NOTICE,
    SYNTH_PROMPT,
    TRAINING_RECORD,
    SynthConfig,
    build_manifest,
    deterministic_device_uid,
    preprocess_spec,
    reduced_config,
    vision_spec,
)
from workers.inference.synth.data import render_samples
from workers.inference.synth.phantom import sample_labels
from workers.inference.synth.reports import INDICATIONS, write_report
from workers.inference.synth.tokenizer import build_tokenizer, to_transformers
from workers.inference.vision import init_vision_weights

log = logging.getLogger(__name__)

TrainingProgress = Callable[[int, int, float], None]
"""Callback ``(step, total_steps, loss)`` called after every optimisation step."""


def _tokenizer_corpus(config: SynthConfig, seed: int) -> list[str]:
    rng = np.random.default_rng([seed, 0x70C])
    corpus = [
        write_report(sample_labels(rng), rng).text for _ in range(config.tokenizer_corpus_reports)
    ]
    prompt_texts = [render_prompt(SYNTH_PROMPT, None)]
    prompt_texts += [render_prompt(SYNTH_PROMPT, indication) for indication in INDICATIONS]
    return corpus + prompt_texts * 20


def _build_llm(config: SynthConfig, vocab_size: int, tokenizer: Any) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    settings: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.llm_layers,
        "num_attention_heads": config.llm_heads,
        "num_key_value_heads": config.llm_heads,
        "max_position_embeddings": config.max_positions,
        "rms_norm_eps": 1e-5,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
        "attn_implementation": "sdpa",
    }
    return LlamaForCausalLM(LlamaConfig(**settings))


class _Cursor:
    """Walks through shuffled sample indices, reshuffling after each pass."""

    def __init__(self, order: np.ndarray) -> None:
        self.order = order
        self.at = 0

    def take(self, size: int, rng: np.random.Generator) -> np.ndarray:
        if self.at + size > len(self.order):
            self.order, self.at = rng.permutation(len(self.order)), 0
        chunk = np.asarray(self.order[self.at : self.at + size])
        self.at += size
        return chunk


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
    lr_scale: float = 1.0
    before: Callable[[], None] | None = None


def _run_phase(
    phase: _Phase,
    config: SynthConfig,
    *,
    offset: int,
    total: int,
    progress: TrainingProgress | None,
    history: dict[str, list[float]],
) -> float:
    """Run one phase; returns its wall-clock seconds."""
    if phase.steps <= 0:
        return 0.0
    started = time.perf_counter()
    if phase.before is not None:
        phase.before()
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
            group["lr"] = phase.lr_scale * _learning_rate(step, phase.steps, config)
        loss, parts = phase.loss(step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(phase.parameters, 1.0)
        optimiser.step()
        for key, value in parts.items():
            history.setdefault(f"{phase.name}.{key}", []).append(value)
        if progress is not None:
            progress(offset + step + 1, total, float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == phase.steps:
            summary = " ".join(f"{k} {v:.4f}" for k, v in parts.items())
            log.info("synth %s step %d/%d %s", phase.name, step + 1, phase.steps, summary)
    return time.perf_counter() - started


def _seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train_synth_model(
    *,
    seed: int = 0,
    config: SynthConfig | None = None,
    progress: TrainingProgress | None = None,
) -> tuple[BundleManifest, ImageEncoder, Any, Any, dict[str, Any]]:
    """Train the synthetic model in memory.

    Parameters
    ----------
    seed
        Seed of data, initialisation and batching.
    config
        Model size and schedule; defaults to :class:`SynthConfig` (the demo model).
    progress
        Called after every step with ``(step, total_steps, loss)``.

    Returns
    -------
    tuple
        ``(manifest, encoder, llm, tokenizer, record)``; ``record`` describes the run.
    """
    config = config or SynthConfig()
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    _seed_everything(seed, config.threads)
    try:
        manifest = build_manifest(config, seed)
        tokenizer = to_transformers(
            build_tokenizer(
                _tokenizer_corpus(config, seed), merge_vocab_size=config.merge_vocab_size
            )
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
        model = SynthTrainingModel(encoder, llm, manifest.vision.grid, config.vision_width)
        model.train()

        sequencer = Sequencer(tokenizer, config, spec)
        rng = np.random.default_rng([seed, 0xBA7C])
        cursor = _Cursor(rng.permutation(len(samples)))
        cache: dict[str, torch.Tensor] = {}

        def next_indices(size: int = config.batch_size) -> np.ndarray:
            return cursor.take(size, rng)

        def vision_loss(_: int) -> tuple[torch.Tensor, dict[str, float]]:
            indices = next_indices(config.vision_batch_size)
            loss = model.aux_loss(sequencer.image_batch(samples, indices))
            return loss, {"aux_loss": float(loss.detach())}

        def language_loss(_: int) -> tuple[torch.Tensor, dict[str, float]]:
            loss = model.language_loss(sequencer.text_batch(rng))
            return loss, {"lm_loss": float(loss.detach())}

        def cache_features() -> None:
            cache["features"] = model.vision_features(samples, spec)

        def align_loss(_: int) -> tuple[torch.Tensor, dict[str, float]]:
            indices = next_indices()
            batch = sequencer.batch(samples, indices, rng)
            lm_loss, _aux = model(batch, features=cache["features"][torch.from_numpy(indices)])
            return lm_loss, {"lm_loss": float(lm_loss.detach())}

        def joint_loss(_: int) -> tuple[torch.Tensor, dict[str, float]]:
            lm_loss, aux_loss = model(sequencer.batch(samples, next_indices(), rng))
            assert aux_loss is not None
            return lm_loss + config.aux_weight * aux_loss, {
                "lm_loss": float(lm_loss.detach()),
                "aux_loss": float(aux_loss.detach()),
            }

        phases = [
            # 1. The tower learns the findings from the auxiliary labels (cheap steps).
            _Phase(
                "vision",
                config.vision_warmup_steps,
                [
                    *encoder.vision.parameters(),
                    *model.aux_head.parameters(),
                    *model.position_probe.parameters(),
                ],
                vision_loss,
            ),
            # 2. The language model learns the report language from text alone.
            _Phase("language", config.language_warmup_steps, list(llm.parameters()), language_loss),
            # 3. Projector and language model learn to read the (frozen) tower, as in LLaVA.
            _Phase(
                "align",
                config.steps,
                [*encoder.projector.parameters(), *llm.parameters()],
                align_loss,
                before=cache_features,
            ),
            # 4. Everything together, end to end, at a lower learning rate.
            _Phase(
                "end_to_end",
                config.finetune_steps,
                list(model.parameters()),
                joint_loss,
                lr_scale=config.finetune_lr_scale,
            ),
        ]
        total_steps = sum(p.steps for p in phases)
        history: dict[str, list[float]] = {}
        train_started = time.perf_counter()
        offset = 0
        phase_seconds: dict[str, float] = {}
        for phase in phases:
            phase_seconds[phase.name] = round(
                _run_phase(
                    phase,
                    config,
                    offset=offset,
                    total=total_steps,
                    progress=progress,
                    history=history,
                ),
                2,
            )
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
        "phase_seconds": phase_seconds,
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
    with tempfile.TemporaryDirectory(
        prefix=".synth-llm-", dir=target.parent if target.parent.exists() else None
    ) as tmp:
        llm_dir = Path(tmp) / "llm"
        llm.save_pretrained(str(llm_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(llm_dir))
        record["bundle_seconds"] = round(time.perf_counter() - started, 2)
        (llm_dir / TRAINING_RECORD).write_text(
            json.dumps(record, indent=2) + "\n", encoding="utf-8"
        )
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
