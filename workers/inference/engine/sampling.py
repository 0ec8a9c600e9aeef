"""Next-token choice on the device, for a whole batch at once, with per-sequence settings.

Order of operations follows the Hugging Face logits processors: repetition penalty,
temperature, top-k, top-p. Greedy rows (temperature 0) take the arg-max of the penalised
logits. Sampled rows draw with the exponential race (arg-max of p / E, E ~ Exp(1)), where
the uniform numbers behind E are a hash of (seed, step, token id): a sequence's tokens depend
on its own seed and nothing else, whatever else shares the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SamplingSettings:
    """How one sequence picks its tokens.

    Attributes
    ----------
    temperature
        0 for greedy decoding.
    top_p
        Nucleus mass kept (1.0 keeps everything).
    top_k
        Most likely tokens kept (0 keeps all).
    repetition_penalty
        CTRL-style penalty on tokens already generated (1.0 for none).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")

    @property
    def greedy(self) -> bool:
        """Whether the sequence decodes greedily."""
        return self.temperature == 0


@dataclass(frozen=True)
class SamplingTensors:
    """Per-slot settings as device tensors (views of the first ``n`` slots)."""

    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor
    penalty: torch.Tensor
    seed: torch.Tensor
    counter: torch.Tensor
    seen: torch.Tensor


def hashed_uniform(seed: torch.Tensor, counter: torch.Tensor,
                   token_ids: torch.Tensor) -> torch.Tensor:
    """Uniform numbers in (0, 1) from a 32-bit integer hash of (seed, counter, token id).

    Parameters
    ----------
    seed, counter
        (n,) int64.
    token_ids
        (n, k) int64 token ids.

    Returns
    -------
    torch.Tensor
        (n, k) float32.
    """
    x = (seed[:, None] & _MASK32) * 0x2545F491 + counter[:, None] * 0x5BD1E995 + token_ids
    x = x & _MASK32
    for multiplier in (0x7FEB352D, 0x68E31DA4, 0x1B873593):
        x = ((x ^ (x >> 16)) * multiplier) & _MASK32
    x = x ^ (x >> 15)
    return (x.to(torch.float32) + 0.5) * (1.0 / 4294967296.0)


def penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Repetition penalty: divide positive, multiply negative logits of seen tokens."""
    factor = penalty[:, None]
    penalised = torch.where(logits < 0, logits * factor, logits / factor)
    return torch.where(seen, penalised, logits)


def kept_tokens(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort each row and mark the tokens top-k then top-p keep.

    Returns
    -------
    tuple of torch.Tensor
        ``(sorted_logits, sorted_ids, keep)``; ``keep`` is a bool mask over sorted positions
        and always keeps the most likely token.
    """
    vocab = scaled.shape[-1]
    sorted_logits, sorted_ids = torch.sort(scaled, dim=-1, descending=True)
    rank = torch.arange(vocab, device=scaled.device)[None, :]
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab))
    in_top_k = rank < k[:, None]
    sorted_logits = sorted_logits.masked_fill(~in_top_k, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    keep = in_top_k & (mass_before < top_p[:, None])
    keep[:, 0] = True
    return sorted_logits, sorted_ids, keep


def choose_tokens(logits: torch.Tensor, settings: SamplingTensors, *, greedy_only: bool
                  ) -> torch.Tensor:
    """Pick the next token of every row.

    Parameters
    ----------
    logits
        (n, vocab) float32.
    settings
        Per-row settings.
    greedy_only
        Skip the sampling branch (every row is greedy): fewer kernels.

    Returns
    -------
    torch.Tensor
        (n,) int64 token ids.
    """
    logits = penalise(logits, settings.seen, settings.penalty)
    greedy_choice = torch.argmax(logits, dim=-1)
    if greedy_only:
        return greedy_choice
    temperature = settings.temperature.clamp(min=1e-5)[:, None]
    sorted_logits, sorted_ids, keep = kept_tokens(logits / temperature, settings.top_k,
                                                  settings.top_p)
    probs = torch.softmax(sorted_logits, dim=-1) * keep
    uniform = hashed_uniform(settings.seed, settings.counter, sorted_ids)
    race = probs / (-torch.log(uniform))
    picked = sorted_ids.gather(-1, torch.argmax(race, dim=-1, keepdim=True))[:, 0]
    return torch.where(settings.temperature > 0, picked, greedy_choice)


__all__ = [
    "SamplingSettings",
    "SamplingTensors",
    "choose_tokens",
    "hashed_uniform",
    "kept_tokens",
    "penalise",
]
