"""Chunked prefill: which prompt tokens run in each engine step beside the decoding batch.

Every engine step decodes one token of every running sequence. Next to them it runs a
bounded number of prompt tokens of sequences still being prefilled: the step's token budget
minus its decode tokens (never less than ``min_chunk``, so admission always moves). Waiting
requests take free slots first come, first served as soon as a slot frees, and their
prompts are prefilled in that order, a chunk at a time, across as many steps as they need.
A long prompt therefore never stops the running sequences, and a freed slot starts filling
at the next step instead of after a whole prompt.

The policy is plain Python over slot numbers and token counts (no tensors), so it is tested
on its own; :class:`workers.inference.engine.DecodeEngine` carries the plans out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")


@dataclass(frozen=True)
class PrefillChunk:
    """Prompt positions ``[start, start + length)`` of the sequence in ``slot``.

    Attributes
    ----------
    slot
        Slot of the sequence.
    start, length
        First position and number of positions.
    final
        Whether the chunk ends the prompt (its last logits give the first token).
    """

    slot: int
    start: int
    length: int
    final: bool

    @property
    def end(self) -> int:
        """One past the chunk's last position."""
        return self.start + self.length


@dataclass(frozen=True)
class StepPlan(Generic[Item]):
    """What one engine step runs.

    Attributes
    ----------
    admitted
        (slot, item) pairs given a slot in this step, in arrival order.
    chunks
        Prompt chunks to run, in admission order.
    decode_slots
        Slots whose sequences decode a token in this step (prompt fully prefilled).
    """

    admitted: tuple[tuple[int, Item], ...]
    chunks: tuple[PrefillChunk, ...]
    decode_slots: tuple[int, ...]

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens run in this step."""
        return sum(chunk.length for chunk in self.chunks)

    @property
    def decode_tokens(self) -> int:
        """Tokens decoded in this step."""
        return len(self.decode_slots)


@dataclass
class _Prefilling(Generic[Item]):
    item: Item
    prompt_tokens: int
    done: int = 0


class ChunkedPrefillScheduler(Generic[Item]):
    """First-come, first-served slot admission and chunked prefill under a token budget.

    Parameters
    ----------
    slots
        Sequences held at once.
    token_budget
        Tokens per step, decode tokens and prompt tokens together.
    min_chunk
        Prompt tokens a step runs when prompts wait, even when the decode tokens alone use
        up the budget.
    """

    def __init__(self, slots: int, token_budget: int, *, min_chunk: int = 16) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        if token_budget < 1 or min_chunk < 1:
            raise ValueError("token_budget and min_chunk must be >= 1")
        self.slots = slots
        self.token_budget = token_budget
        self.min_chunk = min_chunk
        self._waiting: deque[tuple[Item, int]] = deque()
        self._prefilling: dict[int, _Prefilling[Item]] = {}
        self._decoding: set[int] = set()

    # -- state ------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests without a slot."""
        return len(self._waiting)

    @property
    def prefilling(self) -> tuple[int, ...]:
        """Slots whose prompt is not fully prefilled, in admission order."""
        return tuple(self._prefilling)

    @property
    def decoding(self) -> tuple[int, ...]:
        """Slots whose sequence decodes, ascending."""
        return tuple(sorted(self._decoding))

    @property
    def occupied(self) -> int:
        """Slots holding a sequence (prefilling or decoding)."""
        return len(self._prefilling) + len(self._decoding)

    def idle(self) -> bool:
        """Whether nothing waits, prefills or decodes."""
        return not (self._waiting or self._prefilling or self._decoding)

    def free_slots(self) -> list[int]:
        """Slots without a sequence, ascending."""
        taken = set(self._prefilling) | self._decoding
        return [slot for slot in range(self.slots) if slot not in taken]

    def pending_items(self) -> list[Item]:
        """Items still waiting for a slot, in arrival order."""
        return [item for item, _ in self._waiting]

    # -- transitions ------------------------------------------------------------------------

    def submit(self, item: Item, prompt_tokens: int) -> None:
        """Queue a request whose prompt has ``prompt_tokens`` positions (≥ 1)."""
        if prompt_tokens < 1:
            raise ValueError("a prompt has at least one token")
        self._waiting.append((item, prompt_tokens))

    def plan(self, accept: Callable[[Item], bool] = lambda item: True) -> StepPlan[Item]:
        """Admit waiting requests into free slots and choose the step's prompt chunks.

        The returned plan is taken as carried out: chunk progress is recorded, and a
        sequence whose final chunk is in the plan decodes from the next step on.

        Parameters
        ----------
        accept
            Called for each request about to take a slot, in arrival order; ``False``
            drops it (a cancelled request) and the slot goes to the next one.
        """
        admitted: list[tuple[int, Item]] = []
        free = self.free_slots()
        while free and self._waiting:
            item, prompt_tokens = self._waiting.popleft()
            if not accept(item):
                continue
            slot = free.pop(0)
            self._prefilling[slot] = _Prefilling(item, prompt_tokens)
            admitted.append((slot, item))
        decode_slots = self.decoding
        budget = max(self.min_chunk, self.token_budget - len(decode_slots))
        chunks: list[PrefillChunk] = []
        for slot, state in list(self._prefilling.items()):
            if budget <= 0:
                break
            length = min(budget, state.prompt_tokens - state.done)
            final = state.done + length == state.prompt_tokens
            chunks.append(PrefillChunk(slot, state.done, length, final))
            state.done += length
            budget -= length
            if final:
                del self._prefilling[slot]
                self._decoding.add(slot)
        return StepPlan(tuple(admitted), tuple(chunks), decode_slots)

    def finish(self, slot: int) -> None:
        """The sequence in ``slot`` ended; the slot is free for the next request."""
        if slot not in self._decoding:
            raise KeyError(f"slot {slot} holds no decoding sequence")
        self._decoding.discard(slot)

    def clear(self) -> list[Item]:
        """Forget every sequence and request; returns the items that had not ended."""
        items = [state.item for state in self._prefilling.values()]
        items += [item for item, _ in self._waiting]
        self._waiting.clear()
        self._prefilling.clear()
        self._decoding.clear()
        return items


__all__ = ["ChunkedPrefillScheduler", "PrefillChunk", "StepPlan"]
