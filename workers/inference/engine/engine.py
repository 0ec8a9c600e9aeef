"""The decode engine: continuous batching of report generation on one device.

Requests from any number of threads (concurrent draft jobs of one worker) are queued; one
engine thread admits them into free slots of a static KV cache (prefill, first token),
then advances every running sequence together, one token per step, replaying a captured
CUDA graph on a GPU. A sequence that stops frees its slot at the next stop check and the
next waiting request takes it, so the batch stays full while work is queued.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.inference.engine.forward import (
    AttentionKind,
    KVCacheKind,
    LayerKernels,
    RotaryTables,
    StaticKVCache,
    prefill,
    prefill_chunk,
)
from workers.inference.engine.graphs import StepRunner, batch_buckets, bucket_for
from workers.inference.engine.sampling import SamplingSettings, SamplingTensors, choose_tokens
from workers.inference.engine.scheduler import ChunkedPrefillScheduler, StepPlan
from workers.inference.engine.slots import MAX_STOP_TOKENS, DecodeStep, SlotTable
from workers.inference.engine.weights import DecoderWeights, extract_weights, to_fp8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeRequest:
    """One sequence to generate.

    Attributes
    ----------
    inputs_embeds
        (T, hidden) prompt embeddings, image embeddings spliced in.
    max_new_tokens
        Token budget (capped so that the sequence fits the cache).
    sampling
        Per-request sampling settings.
    seed
        Seed of the sampling noise (ignored when greedy).
    stop_token_ids
        Tokens that end the sequence (EOS); empty to always generate ``max_new_tokens``.
    """

    inputs_embeds: torch.Tensor
    max_new_tokens: int
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    seed: int = 0
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.inputs_embeds.ndim != 2 or self.inputs_embeds.shape[0] == 0:
            raise ValueError("inputs_embeds must be a non-empty (T, hidden) tensor")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if len(self.stop_token_ids) > MAX_STOP_TOKENS:
            raise ValueError(f"at most {MAX_STOP_TOKENS} stop tokens")


@dataclass(frozen=True)
class DecodeOutput:
    """A finished sequence.

    Attributes
    ----------
    token_ids
        Generated ids, cut before the first stop token.
    stopped
        Whether a stop token ended it (rather than the budget).
    prompt_tokens
        Prompt length.
    queued_s, first_token_s, total_s
        Seconds from submission to admission, to the first token, and to completion.
    """

    token_ids: list[int]
    stopped: bool
    prompt_tokens: int
    queued_s: float
    first_token_s: float
    total_s: float


@dataclass
class EngineStats:
    """Counters since the engine started."""

    requests: int = 0
    tokens: int = 0
    steps: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    busy_slots_sum: int = 0
    queued_steps: int = 0
    queued_busy_slots_sum: int = 0
    prefill_chunks: int = 0

    def mean_batch(self) -> float:
        """Mean running (decoding) sequences per decode step."""
        return self.busy_slots_sum / self.steps if self.steps else 0.0

    def mean_batch_while_queued(self) -> float:
        """Mean running sequences per decode step taken while requests waited for a slot
        (what slot occupancy is judged by: with nothing waiting, free slots are no loss)."""
        return self.queued_busy_slots_sum / self.queued_steps if self.queued_steps else 0.0


@dataclass
class _Running:
    request: DecodeRequest
    future: Future[DecodeOutput]
    submitted: float
    admitted: float = 0.0
    first_token: float = 0.0


class DecodeEngine:
    """Continuous-batching decoder for a LLaMA-family model.

    Parameters
    ----------
    model
        Hugging Face ``LlamaForCausalLM`` on its device and dtype (its projection weights
        are fused in place; the module keeps working).
    max_batch
        Slots: sequences decoded together.
    max_seq_len
        Longest prompt + output; sizes the KV cache.
    max_new_tokens
        Largest budget a request may ask for (sizes the output buffer).
    cuda_graphs
        Record decode steps as CUDA graphs; default: when the model is on a GPU.
    fused_kernels
        Compile the element-wise parts into fused kernels (GPU only).
    stop_check_interval
        Decode steps between looks at the stop flags (host synchronisations).
    max_prefill_tokens
        Prompt tokens admitted between two decode chunks, so running sequences keep moving
        (whole prompts; see ``prefill_chunk_tokens``).
    attention
        ``"sdpa"`` (fused attention kernel over the whole cache, masked), ``"matmul"``, or
        ``"varlen"`` (each sequence's own length: a Triton kernel on a GPU, the PyTorch
        reference elsewhere).
    prefill_chunk_tokens
        Chunked prefill: the token budget of an engine step (decode tokens plus prompt
        tokens, see :mod:`workers.inference.engine.scheduler`). Prompts are prefilled in
        chunks between decode steps, and a freed slot starts filling at the next step.
        ``None`` prefills each prompt whole when it takes a slot.
    fp8
        E4M3 weights (per output channel) for the layers' projections, products on the fp8
        tensor cores where the device has them.
    kv_cache
        ``"auto"`` (the model's dtype) or ``"fp8"`` (E4M3 with per-vector scales).
    """

    def __init__(
        self,
        model: Any,
        *,
        max_batch: int = 8,
        max_seq_len: int | None = None,
        max_new_tokens: int = 512,
        cuda_graphs: bool | None = None,
        fused_kernels: bool = False,
        stop_check_interval: int = 8,
        max_prefill_tokens: int = 8192,
        attention: AttentionKind = "sdpa",
        prefill_chunk_tokens: int | None = None,
        fp8: bool = False,
        kv_cache: KVCacheKind = "auto",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if prefill_chunk_tokens is not None and prefill_chunk_tokens < 1:
            raise ValueError("prefill_chunk_tokens must be >= 1")
        self.weights: DecoderWeights = extract_weights(model)
        if fp8:
            self.weights = to_fp8(self.weights)
        shape = self.weights.shape
        device = self.weights.device
        self.device = device
        self.max_seq_len = min(max_seq_len or shape.max_positions, shape.max_positions)
        self.max_new_tokens = max_new_tokens
        self.max_batch = max_batch
        self.stop_check_interval = max(1, stop_check_interval)
        self.max_prefill_tokens = max_prefill_tokens
        on_gpu = device.type == "cuda"
        use_graphs = on_gpu if cuda_graphs is None else (cuda_graphs and on_gpu)
        self.cache = StaticKVCache(shape, max_batch, self.max_seq_len,
                                   dtype=self.weights.dtype, device=device, kind=kv_cache)
        self.rotary = RotaryTables(self.weights, self.cache.capacity)
        self.table = SlotTable(max_batch, shape.vocab, max_new_tokens, device,
                               park_position=self.cache.scratch)
        self._prefill_kernels = LayerKernels.plain()
        decode_kernels = (LayerKernels.fused() if (fused_kernels and on_gpu)
                          else self._prefill_kernels)
        self.step = DecodeStep(self.weights, decode_kernels, self.cache, self.rotary, self.table,
                               torch.arange(self.cache.capacity, device=device), attention)
        self.buckets = batch_buckets(max_batch)
        self.runner = StepRunner(self.step, self.buckets, use_graphs=use_graphs)
        with torch.inference_mode():
            self.runner.record_all()
        self.stats = EngineStats()
        self._slots: list[_Running | None] = [None] * max_batch
        self._queue: queue.Queue[_Running | None] = queue.Queue()
        self._pending: list[_Running] = []
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self._scheduler: ChunkedPrefillScheduler[_Running] | None = (
            None if prefill_chunk_tokens is None
            else ChunkedPrefillScheduler(max_batch, prefill_chunk_tokens))
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- public API -------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Configuration and memory figures (for logs and the monitoring page)."""
        return {
            "device": str(self.device),
            "max_batch": self.max_batch,
            "max_seq_len": self.max_seq_len,
            "cuda_graphs": self.runner.recorded,
            "fused_kernels": self.step.kernels.compiled,
            "attention": self.step.attention,
            "prefill_chunk_tokens": self.prefill_chunk_tokens,
            "fp8_weights": self.weights.fp8,
            "kv_cache": self.cache.kind,
            "kv_cache_bytes": self.cache.nbytes(),
            "kv_bytes_per_token": self.cache.bytes_per_token(),
            "weight_bytes": self.weights.nbytes(),
        }

    def step_bytes(self, batch: int, context: int) -> int:
        """Bytes one decode step must read: every projection and norm weight once, and the
        ``context`` cached positions of each of ``batch`` sequences (the floor's numerator)."""
        return self.weights.nbytes() + batch * context * self.cache.bytes_per_token()

    def measure_step(self, batch: int, *, context: int, steps: int = 50,
                     greedy_only: bool = True) -> float:
        """Mean milliseconds of one decode step with ``batch`` sequences ``context`` tokens long.

        For capacity planning and benchmarks; only while the engine is idle (before the first
        :meth:`submit` or after :meth:`close`). Slots are filled with placeholder sequences
        (the step reads the same bytes whatever the cache holds) and released afterwards.
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise RuntimeError("measure_step needs an idle engine")
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"batch must be in [1, {self.max_batch}]")
        context = min(context, self.max_seq_len - steps - 1)
        bucket = bucket_for(batch, self.buckets)
        with torch.inference_mode():
            for slot in range(batch):
                self.table.occupy(slot, first_token=0, position=context,
                                  max_new_tokens=self.max_new_tokens, settings=SamplingSettings(),
                                  seed=slot, stop_ids=())
            self.runner.run(bucket, greedy_only=greedy_only)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            started = time.perf_counter()
            for _ in range(steps):
                self.runner.run(bucket, greedy_only=greedy_only)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - started
            for slot in range(batch):
                self.table.release(slot)
        return 1000.0 * elapsed / steps

    def submit(self, request: DecodeRequest) -> Future[DecodeOutput]:
        """Queue a request; the future resolves when its sequence ends.

        Raises
        ------
        ValueError
            When the prompt does not fit the cache.
        RuntimeError
            After :meth:`close`.
        """
        prompt = int(request.inputs_embeds.shape[0])
        width = self.weights.shape.hidden
        if int(request.inputs_embeds.shape[1]) != width:
            raise ValueError(f"inputs_embeds must be (T, {width}), "
                             f"got {tuple(request.inputs_embeds.shape)}")
        if prompt >= self.max_seq_len:
            raise ValueError(
                f"prompt of {prompt} tokens does not fit a {self.max_seq_len}-token cache")
        future: Future[DecodeOutput] = Future()
        # Queued under the lock: an engine thread that fails takes the lock to fail what is
        # queued and to step down, so a request is either failed with it or served by the
        # next thread, never left in a queue nobody reads.
        with self._lock:
            if self._closed:
                raise RuntimeError("the decode engine is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="decode-engine",
                                                daemon=True)
                self._thread.start()
            self._queue.put(_Running(request, future, time.perf_counter()))
        return future

    def generate(self, requests: Sequence[DecodeRequest]) -> list[DecodeOutput]:
        """Submit ``requests`` together and wait for all of them."""
        futures = [self.submit(r) for r in requests]
        return [f.result() for f in futures]

    def close(self) -> None:
        """Stop the engine thread and free the KV cache and graphs.

        Queued requests fail with ``RuntimeError``.
        """
        with self._lock:
            self._closed = True
            thread = self._thread
        self._queue.put(None)
        if thread is not None:
            thread.join(timeout=30)
        self.runner.release()
        self.cache.release()

    # -- engine thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while self._serve_once():
                    pass
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it
            log.exception("decode engine stopped on an error")
            with self._lock:
                self._fail_all(exc)
                self._thread = None
            return
        self._fail_all(RuntimeError("the decode engine is closed"))

    def _serve_once(self) -> bool:
        """Admit, decode one chunk, finish; ``False`` once closed."""
        if self._scheduler is not None:
            return self._serve_once_chunked(self._scheduler)
        block = not any(self._slots) and not self._pending
        if not self._drain_queue(block=block):
            return False
        self._admit()
        if any(self._slots):
            self._finish_done(self._decode_chunk(queued=bool(self._pending)))
        return True

    def _serve_once_chunked(self, scheduler: ChunkedPrefillScheduler[_Running]) -> bool:
        """One step of chunked prefill (admission, prompt chunks) then one decode chunk."""
        if not self._drain_queue(block=scheduler.idle() and not self._pending):
            return False
        for running in self._pending:
            scheduler.submit(running, int(running.request.inputs_embeds.shape[0]))
        self._pending = []
        plan = scheduler.plan(accept=lambda item: item.future.set_running_or_notify_cancel())
        self._run_plan(plan)
        if scheduler.decoding:
            done = self._decode_chunk(queued=scheduler.waiting > 0)
            finished = self._finish_done(done)
            for slot in finished:
                scheduler.finish(slot)
        return True

    def _run_plan(self, plan: StepPlan[_Running]) -> None:
        now = time.perf_counter()
        for slot, admitted in plan.admitted:
            admitted.admitted = now
            self.table.release(slot)
            self._slots[slot] = admitted
        for chunk in plan.chunks:
            running = self._slots[chunk.slot]
            assert running is not None
            request = running.request
            started = time.perf_counter()
            embeds = request.inputs_embeds[chunk.start:chunk.end].to(
                device=self.device, dtype=self.weights.dtype)
            logits = prefill_chunk(self.weights, self._prefill_kernels, self.cache, self.rotary,
                                   chunk.slot, embeds, start=chunk.start)
            self.stats.prefill_chunks += 1
            if chunk.final:
                self._occupy(chunk.slot, running, logits)
            self.stats.prefill_seconds += time.perf_counter() - started

    def _drain_queue(self, *, block: bool) -> bool:
        try:
            item = self._queue.get() if block else self._queue.get_nowait()
        except queue.Empty:
            return True
        while True:
            if item is None:
                return False
            self._pending.append(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return True

    def _admit(self) -> None:
        budget = self.max_prefill_tokens
        while self._pending and None in self._slots:
            running = self._pending[0]
            length = int(running.request.inputs_embeds.shape[0])
            if length > budget and budget < self.max_prefill_tokens:
                break
            self._pending.pop(0)
            budget -= length
            if not running.future.set_running_or_notify_cancel():
                continue
            slot = self._slots.index(None)
            try:
                self._start(slot, running)
            except torch.OutOfMemoryError as exc:
                self.table.release(slot)
                running.future.set_exception(exc)
            except BaseException:
                # Back among the pending, so that the engine thread fails it with the
                # others as it steps down (under the lock a new request waits on).
                self.table.release(slot)
                self._pending.insert(0, running)
                raise

    def _start(self, slot: int, running: _Running) -> None:
        request = running.request
        running.admitted = time.perf_counter()
        embeds = request.inputs_embeds.to(device=self.device, dtype=self.weights.dtype)
        logits = prefill(self.weights, self._prefill_kernels, self.cache, self.rotary, slot, embeds)
        self._occupy(slot, running, logits)
        self.stats.prefill_seconds += running.first_token - running.admitted
        self._slots[slot] = running

    def _occupy(self, slot: int, running: _Running, logits: torch.Tensor) -> None:
        """Choose the first token from the prompt's last logits and start decoding the slot."""
        request = running.request
        prompt = int(request.inputs_embeds.shape[0])
        budget = min(request.max_new_tokens, self.max_new_tokens, self.max_seq_len - prompt)
        first = int(choose_tokens(logits[None], self._first_token_settings(request),
                                  greedy_only=request.sampling.greedy)[0])
        running.first_token = time.perf_counter()
        self.table.occupy(slot, first_token=first, position=prompt, max_new_tokens=budget,
                          settings=request.sampling, seed=request.seed,
                          stop_ids=request.stop_token_ids)

    def _first_token_settings(self, request: DecodeRequest) -> SamplingTensors:
        s = request.sampling

        def one(value: float | int, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([value], dtype=dtype, device=self.device)

        return SamplingTensors(
            temperature=one(s.temperature, torch.float32), top_p=one(s.top_p, torch.float32),
            top_k=one(s.top_k, torch.long), penalty=one(s.repetition_penalty, torch.float32),
            seed=one(request.seed, torch.long), counter=one(0, torch.long),
            seen=torch.zeros((1, self.weights.shape.vocab), dtype=torch.bool, device=self.device),
        )

    def _decode_chunk(self, *, queued: bool) -> list[bool]:
        used = max(i for i, r in enumerate(self._slots) if r is not None) + 1
        bucket = bucket_for(used, self.buckets)
        greedy_only = all(r.request.sampling.greedy for r in self._slots[:bucket] if r is not None)
        busy = sum(r is not None and r.first_token > 0 for r in self._slots)
        started = time.perf_counter()
        for _ in range(self.stop_check_interval):
            self.runner.run(bucket, greedy_only=greedy_only)
        self.stats.steps += self.stop_check_interval
        self.stats.busy_slots_sum += busy * self.stop_check_interval
        if queued:
            self.stats.queued_steps += self.stop_check_interval
            self.stats.queued_busy_slots_sum += busy * self.stop_check_interval
        done = self.table.done[:bucket].tolist()
        self.stats.decode_seconds += time.perf_counter() - started
        return done

    def _finish_done(self, done: list[bool]) -> list[int]:
        """Resolve the futures of ended sequences and free their slots; returns the slots."""
        finished = [i for i, flag in enumerate(done)
                    if flag and (occupant := self._slots[i]) is not None
                    and occupant.first_token > 0]
        if not finished:
            return []
        counts = self.table.count[finished].tolist()
        rows = self.table.output[finished].tolist()
        now = time.perf_counter()
        for slot, count, row in zip(finished, counts, rows, strict=True):
            running = self._slots[slot]
            assert running is not None
            ids = row[:count]
            stops = running.request.stop_token_ids
            cut = next((i for i, t in enumerate(ids) if t in stops), None)
            output = DecodeOutput(
                token_ids=ids if cut is None else ids[:cut],
                stopped=cut is not None,
                prompt_tokens=int(running.request.inputs_embeds.shape[0]),
                queued_s=running.admitted - running.submitted,
                first_token_s=running.first_token - running.submitted,
                total_s=now - running.submitted,
            )
            self.table.release(slot)
            self._slots[slot] = None
            self.stats.requests += 1
            self.stats.tokens += len(output.token_ids)
            running.future.set_result(output)
        return finished

    def _fail_all(self, error: BaseException) -> None:
        waiting = [r for r in self._slots if r is not None] + self._pending
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                waiting.append(item)
        if self._scheduler is not None:
            waiting.extend(self._scheduler.clear())
        for running in waiting:
            if not running.future.done():
                running.future.set_exception(error)
        self._slots = [None] * self.max_batch
        self._pending = []
        for slot in range(self.max_batch):
            self.table.release(slot)


__all__ = ["DecodeEngine", "DecodeOutput", "DecodeRequest", "EngineStats"]
