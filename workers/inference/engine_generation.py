"""Report generation through the decode engine, for a loaded bundle.

The engine batches the sequences of every draft running in the worker process: each
call submits its rows and waits for them, and the engine thread decodes whatever is
running together. Greedy output equals ``model.generate``; sampled output depends on the
request's seed alone (not on what else shares the batch), so the same study, model and
seed give the same draft.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from workers.inference.engine import DecodeEngine, DecodeRequest, SamplingSettings
from workers.inference.engine.forward import KVCacheKind
from workers.inference.llm import GenerationResult
from workers.inference.manifest import GenerationSpec

log = logging.getLogger(__name__)

PROMPT_TEXT_ALLOWANCE = 256
"""Prompt tokens besides the image tokens that the KV cache is sized for (system text,
question and indication); a longer prompt is generated without the engine."""


def sampling_of(spec: GenerationSpec) -> SamplingSettings:
    """The engine's sampling settings for a bundle's generation spec."""
    return SamplingSettings(temperature=max(0.0, spec.temperature), top_p=spec.top_p,
                            top_k=spec.top_k, repetition_penalty=spec.repetition_penalty)


class EngineGenerator:
    """Generates report text for spliced prompts with a :class:`DecodeEngine`.

    Parameters
    ----------
    model, tokenizer
        The bundle's LLM (a LLaMA-family causal LM on its device) and tokenizer.
    max_batch
        Sequences decoded together (the worker's concurrent drafts).
    num_image_tokens
        Image tokens per prompt (sizes the KV cache with the prompt allowance).
    max_new_tokens
        Largest output a request may ask for.
    fused_kernels
        Fuse the element-wise parts of a layer (GPU only).
    fp8, kv_cache
        E4M3 weights, and ``"fp8"`` for an E4M3 KV cache (the bundle's ``engine`` block).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int, num_image_tokens: int,
                 max_new_tokens: int, fused_kernels: bool = True, fp8: bool = False,
                 kv_cache: KVCacheKind = "auto") -> None:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("tokenizer has no EOS token")
        self.tokenizer = tokenizer
        self.eos = int(eos)
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        wanted = num_image_tokens + PROMPT_TEXT_ALLOWANCE + max_new_tokens
        self.engine = DecodeEngine(model, max_batch=max_batch, max_seq_len=wanted,
                                   max_new_tokens=max_new_tokens, fused_kernels=fused_kernels,
                                   fp8=fp8, kv_cache=kv_cache)

    def describe(self) -> dict[str, Any]:
        """The engine's configuration (device, slots, cache size)."""
        return self.engine.describe()

    def fits(self, prompt_tokens: int) -> bool:
        """Whether a prompt of this length leaves room for at least one new token."""
        return prompt_tokens + 1 < self.engine.max_seq_len

    def generate(self, rows: Sequence[torch.Tensor], spec: GenerationSpec, *,
                 seed: int | None = None, max_new_tokens: int | None = None
                 ) -> list[GenerationResult]:
        """Generate one report per (T, hidden) spliced prompt.

        Parameters
        ----------
        rows
            Prompt embeddings, one tensor per image (no padding).
        spec
            Decoding parameters.
        seed
            Sampling seed of every row.
        max_new_tokens
            Override of ``spec.max_new_tokens``; capped by the model's context.

        Raises
        ------
        ValueError
            When a prompt does not fit the engine's cache (see :meth:`fits`).
        """
        sampling = sampling_of(spec)
        requests = []
        for row in rows:
            prompt = int(row.shape[0])
            limit = max_new_tokens if max_new_tokens is not None else spec.max_new_tokens
            if self.context > 0:
                limit = max(1, min(limit, self.context - prompt - 1))
            requests.append(DecodeRequest(row, limit, sampling=sampling, seed=seed or 0,
                                          stop_token_ids=(self.eos,)))
        outputs = self.engine.generate(requests)
        return [
            GenerationResult(
                text=self.tokenizer.decode(out.token_ids, skip_special_tokens=True).strip(),
                token_ids=out.token_ids,
                prompt_tokens=out.prompt_tokens,
                new_tokens=len(out.token_ids),
                seconds=out.total_s,
                stopped_on_eos=out.stopped,
            )
            for out in outputs
        ]

    def close(self) -> None:
        """Stop the engine and free its cache."""
        self.engine.close()


__all__ = ["PROMPT_TEXT_ALLOWANCE", "EngineGenerator", "sampling_of"]
