"""Training batches and the training-time model wrapper of the synthetic model.

Sequences are built with the bundle's own prompt code (:mod:`workers.inference.prompts`,
:func:`workers.inference.llm.tokenize_prompt`) so that training and drafting splice the image
embeddings at exactly the same place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.inference.encoder import ImageEncoder
from workers.inference.llm import PromptTokens, tokenize_prompt
from workers.inference.manifest import PreprocessSpec
from workers.inference.prompts import render_prompt, split_prompt
from workers.inference.synth.config import DECISIVE_WORDS, SYNTH_PROMPT, SynthConfig
from workers.inference.synth.data import (
    AUX_TARGETS,
    SampleSet,
    aux_target_vector,
    normalise_batch,
)
from workers.inference.synth.phantom import sample_labels
from workers.inference.synth.reports import INDICATIONS, write_report
from workers.inference.synth.tokenizer import SPACE_MARK


@dataclass
class ImageTextBatch:
    """Spliced training sequences: ``before`` + image tokens + ``inputs_after``."""

    pixels: torch.Tensor
    inputs_after: torch.Tensor
    labels_after: torch.Tensor
    weights_after: torch.Tensor
    attention: torch.Tensor
    aux: torch.Tensor
    before: torch.Tensor


@dataclass
class TextBatch:
    """Report text without an image (language warm-up)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    attention: torch.Tensor


@dataclass
class ImageBatch:
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


def weighted_lm_loss(
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


class Sequencer:
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
            before, after = split_prompt(
                render_prompt(SYNTH_PROMPT, indication), SYNTH_PROMPT.image_token
            )
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
            decisive = sentence_start or word in DECISIVE_WORDS
            weights.append(self.config.decision_weight if decisive else 1.0)
            sentence_start = piece.endswith((".", ":"))
        return ids, weights

    def text_batch(self, rng: np.random.Generator) -> TextBatch:
        """Reports of freshly sampled labels after the prompt, with no image in between."""
        rows = []
        for _ in range(self.config.batch_size):
            prompt = self.prompt(self._indication(rng))
            target, weights = self._target(sample_labels(rng), rng)
            rows.append((list(prompt.before) + list(prompt.after), target, weights))
        inputs, labels, weights_arr, attention = _pad(rows, self.pad)
        return TextBatch(
            inputs=torch.from_numpy(inputs),
            labels=torch.from_numpy(labels),
            weights=torch.from_numpy(weights_arr),
            attention=torch.from_numpy(attention),
        )

    def image_batch(self, samples: SampleSet, indices: np.ndarray) -> ImageBatch:
        """Normalised pixels and auxiliary targets."""
        aux = np.stack([aux_target_vector(samples.labels[int(i)]) for i in indices])
        return ImageBatch(
            pixels=torch.from_numpy(normalise_batch(samples.images[indices], self.spec)),
            aux=torch.from_numpy(aux),
        )

    def batch(
        self, samples: SampleSet, indices: np.ndarray, rng: np.random.Generator
    ) -> ImageTextBatch:
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
        return ImageTextBatch(
            pixels=images.pixels,
            inputs_after=torch.from_numpy(inputs),
            labels_after=torch.from_numpy(labels),
            weights_after=torch.from_numpy(weights_arr),
            attention=torch.from_numpy(attention),
            aux=images.aux,
            before=torch.tensor(next(iter(befores)), dtype=torch.long),
        )


def _token_places(grid: int) -> torch.Tensor:
    """Per-token targets ``[patient right (image left), upper third, lower third]``."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    centre_col = (cols.float() + 0.5) / grid
    centre_row = (rows.float() + 0.5) / grid
    places = torch.stack(
        [(centre_col < 0.5).float(), (centre_row < 1 / 3).float(), (centre_row > 2 / 3).float()],
        dim=-1,
    )
    return places.reshape(grid * grid, 3)


class SynthTrainingModel(nn.Module):
    """Encoder + LLM + auxiliary image head, for training only."""

    def __init__(self, encoder: ImageEncoder, llm: Any, grid: int, width: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.llm = llm
        self.aux_head = nn.Linear(grid * grid * width, len(AUX_TARGETS))
        self.position_probe = nn.Linear(width, 3)
        self.register_buffer("token_places", _token_places(grid), persistent=False)

    def _aux_from_features(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.aux_head(features.flatten(1))
        findings = nn.functional.binary_cross_entropy_with_logits(logits, targets)
        # Every token also states where it lies (patient side, upper/lower zone), so that the
        # side of a finding can be read linearly from the tokens that show it.
        places = self.position_probe(features)
        token_places = torch.as_tensor(self.token_places)
        where = nn.functional.binary_cross_entropy_with_logits(
            places, token_places.expand_as(places)
        )
        return findings + 0.1 * where

    def aux_loss(self, batch: ImageBatch) -> torch.Tensor:
        """Auxiliary loss on the vision tokens (findings plus token places)."""
        return self._aux_from_features(self.encoder.vision(batch.pixels), batch.aux)

    def language_loss(self, batch: TextBatch) -> torch.Tensor:
        """Causal LM loss on report text alone."""
        return weighted_lm_loss(
            self.llm, batch.attention, batch.labels, batch.weights, input_ids=batch.inputs
        )

    def forward(
        self, batch: ImageTextBatch, features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """LM loss of the spliced sequences and the auxiliary loss.

        With ``features`` (vision tokens computed beforehand, tower frozen) the tower is not run
        and no auxiliary loss is returned.
        """
        aux_loss: torch.Tensor | None = None
        if features is None:
            features = self.encoder.vision(batch.pixels)
            aux_loss = self._aux_from_features(features, batch.aux)
        image = self.encoder.projector(features)
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
        lm_loss = weighted_lm_loss(self.llm, attention, labels, weights, inputs_embeds=inputs)
        return lm_loss, aux_loss

    @torch.no_grad()
    def vision_features(
        self, samples: SampleSet, spec: PreprocessSpec, chunk: int = 128
    ) -> torch.Tensor:
        """Vision tokens of every sample with the tower as it is now."""
        was_training = self.encoder.training
        self.encoder.eval()
        parts = [
            self.encoder.vision(
                torch.from_numpy(normalise_batch(samples.images[i : i + chunk], spec))
            )
            for i in range(0, len(samples), chunk)
        ]
        self.encoder.train(was_training)
        return torch.cat(parts)


__all__ = [
    "ImageBatch",
    "ImageTextBatch",
    "Sequencer",
    "SynthTrainingModel",
    "TextBatch",
    "weighted_lm_loss",
]
