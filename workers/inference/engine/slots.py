"""The engine's slot table: per-sequence state on the device, and the captured decode step.

Everything a decode step reads or writes lives in fixed tensors here, so the step can be
recorded once as a CUDA graph and replayed: the step samples the next tokens, appends them
to each slot's output row, updates positions, counts and stop flags, all on the device. The
host looks at the ``done`` flags only every few steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workers.inference.engine.forward import (
    AttentionKind,
    DecodeInputs,
    LayerKernels,
    RotaryTables,
    StaticKVCache,
    decode,
)
from workers.inference.engine.sampling import SamplingSettings, SamplingTensors, choose_tokens
from workers.inference.engine.weights import DecoderWeights

MAX_STOP_TOKENS = 4
"""Stop token ids a request may name (EOS included)."""


class SlotTable:
    """Device tensors describing every slot.

    Parameters
    ----------
    slots
        Number of sequences decoded at once.
    vocab
        Vocabulary size (for the seen-token mask of the repetition penalty).
    max_new_tokens
        Longest output any request may ask for.
    device
        Where the tensors live.
    park_position
        Cache position a slot without a running sequence writes its step's keys to (the
        cache's scratch row), so that a slot being prefilled keeps its prompt intact.
    """

    def __init__(self, slots: int, vocab: int, max_new_tokens: int, device: torch.device,
                 park_position: int = 0) -> None:
        def zeros(*size: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.zeros(size, dtype=dtype, device=device)

        self.size = slots
        self.max_new_tokens = max_new_tokens
        self.park_position = park_position
        self.tokens = zeros(slots)
        self.positions = torch.full((slots,), park_position, dtype=torch.long, device=device)
        self.active = zeros(slots, dtype=torch.bool)
        self.done = zeros(slots, dtype=torch.bool)
        self.count = zeros(slots)
        self.limit = zeros(slots)
        self.temperature = zeros(slots, dtype=torch.float32)
        self.top_p = torch.ones(slots, dtype=torch.float32, device=device)
        self.top_k = zeros(slots)
        self.penalty = torch.ones(slots, dtype=torch.float32, device=device)
        self.seed = zeros(slots)
        self.stop_ids = torch.full((slots, MAX_STOP_TOKENS), -1, dtype=torch.long, device=device)
        self.seen = zeros(slots, vocab, dtype=torch.bool)
        self.output = zeros(slots, max_new_tokens)
        self.slot_index = torch.arange(slots, device=device)

    def sampling(self, n: int) -> SamplingTensors:
        """Sampling settings of the first ``n`` slots."""
        return SamplingTensors(
            temperature=self.temperature[:n], top_p=self.top_p[:n], top_k=self.top_k[:n],
            penalty=self.penalty[:n], seed=self.seed[:n], counter=self.count[:n],
            seen=self.seen[:n],
        )

    def occupy(self, slot: int, *, first_token: int, position: int, max_new_tokens: int,
               settings: SamplingSettings, seed: int, stop_ids: tuple[int, ...]) -> None:
        """Start a sequence in ``slot`` whose prompt filled positions ``[0, position)``.

        ``first_token`` (chosen from the prefill logits) is output token 0 and the input
        of the slot's first decode step.
        """
        stops = list(stop_ids[:MAX_STOP_TOKENS]) + [-1] * (MAX_STOP_TOKENS - len(stop_ids))
        finished = first_token in stop_ids or max_new_tokens <= 1
        self.tokens[slot] = first_token
        self.positions[slot] = position
        self.count[slot] = 1
        self.limit[slot] = max_new_tokens
        self.temperature[slot] = settings.temperature
        self.top_p[slot] = settings.top_p
        self.top_k[slot] = settings.top_k
        self.penalty[slot] = settings.repetition_penalty
        self.seed[slot] = seed
        self.stop_ids[slot] = torch.tensor(stops, dtype=torch.long)
        self.seen[slot] = False
        self.seen[slot, first_token] = True
        self.output[slot, 0] = first_token
        self.done[slot] = finished
        self.active[slot] = True

    def release(self, slot: int) -> None:
        """Free ``slot`` for the next request (its steps write to the scratch position)."""
        self.active[slot] = False
        self.done[slot] = False
        self.positions[slot] = self.park_position


@dataclass
class DecodeStep:
    """One decode step over the first ``n`` slots, written so it can be graph-captured."""

    weights: DecoderWeights
    kernels: LayerKernels
    cache: StaticKVCache
    rotary: RotaryTables
    table: SlotTable
    key_index: torch.Tensor
    attention: AttentionKind = "sdpa"

    def __call__(self, n: int, *, greedy_only: bool) -> None:
        """Advance every running sequence among the first ``n`` slots by one token."""
        t = self.table
        running = t.active[:n] & ~t.done[:n]
        lengths = torch.where(running, t.positions[:n] + 1, torch.ones_like(t.positions[:n]))
        inputs = DecodeInputs(tokens=t.tokens[:n], positions=t.positions[:n],
                              slot_index=t.slot_index[:n], key_index=self.key_index,
                              lengths=lengths)
        logits = decode(self.weights, self.kernels, self.cache, self.rotary, inputs,
                        self.attention)
        chosen = choose_tokens(logits, t.sampling(n), greedy_only=greedy_only)
        rows = t.slot_index[:n]
        column = t.count[:n].clamp(max=t.max_new_tokens - 1)
        t.output[rows, column] = torch.where(running, chosen, t.output[rows, column])
        t.seen[rows, chosen] = t.seen[rows, chosen] | running
        t.count[:n] += running.long()
        stopped = (chosen[:, None] == t.stop_ids[:n]).any(dim=-1)
        t.done[:n] |= running & (stopped | (t.count[:n] >= t.limit[:n]))
        last = self.cache.max_len - 1
        t.positions[:n] = (t.positions[:n] + running.long()).clamp(max=last)
        t.tokens[:n] = torch.where(running, chosen, t.tokens[:n])


__all__ = ["MAX_STOP_TOKENS", "DecodeStep", "SlotTable"]
