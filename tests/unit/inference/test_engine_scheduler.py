"""The chunked-prefill policy: token budget, first come first served, no starved decodes,
contiguous chunks, and slot occupancy under a stream of arrivals."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from workers.inference.engine.scheduler import ChunkedPrefillScheduler, StepPlan


@dataclass
class Request:
    name: int
    prompt: int
    decode: int
    arrival: int = 0
    chunks: list[tuple[int, int]] = field(default_factory=list)
    tokens: int = 0
    first_step: int = -1
    last_step: int = -1


def run_stream(scheduler: ChunkedPrefillScheduler[Request], requests: list[Request],
               max_steps: int = 10_000) -> dict[str, float]:
    """Carry plans out step by step: requests arrive at their step, decoding sequences make
    one token per step and end after ``decode`` tokens. Checks every step's plan."""
    by_slot: dict[int, Request] = {}
    arrivals = sorted(requests, key=lambda r: r.arrival)
    waiting_steps = 0
    busy_while_waiting = 0
    finished = 0
    budget = scheduler.token_budget
    for step in range(max_steps):
        while arrivals and arrivals[0].arrival <= step:
            request = arrivals.pop(0)
            scheduler.submit(request, request.prompt)
        before = set(scheduler.decoding)
        plan = scheduler.plan()
        check_plan(plan, before, budget, scheduler.min_chunk)
        for slot, request in plan.admitted:
            assert slot not in by_slot
            by_slot[slot] = request
        for chunk in plan.chunks:
            request = by_slot[chunk.slot]
            request.chunks.append((chunk.start, chunk.length))
            assert chunk.start == sum(length for _, length in request.chunks[:-1])
            assert chunk.final == (chunk.end == request.prompt)
        if scheduler.waiting:
            waiting_steps += 1
            busy_while_waiting += len(plan.decode_slots)
        for slot in plan.decode_slots:
            request = by_slot[slot]
            if request.first_step < 0:
                request.first_step = step
            assert request.last_step in (-1, step - 1), "a decoding sequence skipped a step"
            request.last_step = step
            request.tokens += 1
            if request.tokens == request.decode:
                scheduler.finish(slot)
                del by_slot[slot]
                finished += 1
        if finished == len(requests):
            break
    assert finished == len(requests)
    assert scheduler.idle()
    return {"steps": step + 1, "waiting_steps": waiting_steps,
            "occupancy_while_waiting": busy_while_waiting / max(1, waiting_steps)
            / scheduler.slots}


def check_plan(plan: StepPlan[Request], decoding_before: set[int], budget: int,
               min_chunk: int) -> None:
    """Invariants of one step."""
    assert set(plan.decode_slots) == decoding_before, "every decoding sequence decodes"
    assert plan.prefill_tokens <= max(min_chunk, budget - plan.decode_tokens)
    assert all(not c.final for c in plan.chunks[-1:]) or all(c.final for c in plan.chunks)
    assert all(c.final for c in plan.chunks[:-1]), "only the last chunk of a step may be partial"
    assert not {c.slot for c in plan.chunks} & decoding_before


def test_budget_fifo_and_contiguous_chunks() -> None:
    scheduler: ChunkedPrefillScheduler[Request] = ChunkedPrefillScheduler(4, 64, min_chunk=8)
    requests = [Request(i, prompt, 10) for i, prompt in enumerate([100, 30, 5, 64, 1, 77])]
    admitted: list[int] = []
    original = scheduler.plan

    def recording_plan(*args: object, **kwargs: object) -> StepPlan[Request]:
        plan = original()
        admitted.extend(r.name for _, r in plan.admitted)
        return plan

    scheduler.plan = recording_plan  # type: ignore[method-assign]
    run_stream(scheduler, requests)
    assert admitted == [0, 1, 2, 3, 4, 5], "slots are taken in arrival order"
    for request in requests:
        assert sum(length for _, length in request.chunks) == request.prompt
        assert request.tokens == request.decode
    # The first prompt (100 tokens, 64 a step) needs two steps; the next ones follow it.
    assert requests[0].chunks == [(0, 64), (64, 36)]
    assert requests[1].chunks[0] == (0, 28)


def test_a_full_batch_still_admits_min_chunk_tokens_per_step() -> None:
    scheduler: ChunkedPrefillScheduler[Request] = ChunkedPrefillScheduler(3, 2, min_chunk=5)
    requests = [Request(0, 4, 50), Request(1, 4, 50), Request(2, 23, 3, arrival=3)]
    run_stream(scheduler, requests)
    # Two sequences decode (two tokens: the whole budget), the third still gets 5 a step.
    assert requests[2].chunks == [(0, 5), (5, 5), (5 * 2, 5), (15, 5), (20, 3)]


def test_cancelled_requests_give_their_turn_to_the_next() -> None:
    scheduler: ChunkedPrefillScheduler[str] = ChunkedPrefillScheduler(2, 100)
    for name in "abcd":
        scheduler.submit(name, 10)
    plan = scheduler.plan(accept=lambda name: name != "b")
    assert [item for _, item in plan.admitted] == ["a", "c"]
    assert [slot for slot, _ in plan.admitted] == [0, 1]
    assert scheduler.pending_items() == ["d"]
    assert [c.slot for c in plan.chunks] == [0, 1] and all(c.final for c in plan.chunks)
    assert scheduler.decoding == (0, 1) and scheduler.free_slots() == []
    scheduler.finish(1)
    assert scheduler.free_slots() == [1]
    assert [item for _, item in scheduler.plan().admitted] == ["d"]
    scheduler.finish(1)
    with pytest.raises(KeyError):
        scheduler.finish(1)
    assert sorted(scheduler.clear()) == [] and scheduler.idle()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        ChunkedPrefillScheduler(0, 10)
    with pytest.raises(ValueError):
        ChunkedPrefillScheduler(2, 0)
    with pytest.raises(ValueError):
        ChunkedPrefillScheduler[str](2, 10).submit("x", 0)


def test_slots_stay_at_least_90_percent_busy_under_a_stream_of_arrivals() -> None:
    """LLaVA-Rad-like proportions, scaled down: 16 slots, prompts of 143 tokens, 20–32 new
    tokens, requests arriving faster than they are served; budget 512 tokens a step."""
    requests = [Request(i, 143, 20 + (i * 7) % 13, arrival=i // 2) for i in range(300)]
    scheduler: ChunkedPrefillScheduler[Request] = ChunkedPrefillScheduler(16, 512)
    figures = run_stream(scheduler, requests)
    assert figures["waiting_steps"] > 200, "the stream must keep requests waiting"
    assert figures["occupancy_while_waiting"] >= 0.9, figures
    # Whole-prompt admission at one prompt a step, as before chunking, would idle slots:
    # with 143-token prompts and a 150-token budget, most steps run one prompt only.
    slow = ChunkedPrefillScheduler[Request](16, 16 + 143, min_chunk=16)
    fresh = [Request(i, 143, 20 + (i * 7) % 13, arrival=i // 2) for i in range(300)]
    assert run_stream(slow, fresh)["occupancy_while_waiting"] < figures["occupancy_while_waiting"]
