"""Decode steps recorded as CUDA graphs, one per batch bucket and sampling mode.

A bucket is a slot count (1, 2, 4, ...): a step over the first ``n`` slots. Graphs are
recorded while every slot is free (recording runs the step once for warm-up), share one
memory pool, and replay with a single launch. On a CPU the step simply runs.
"""

from __future__ import annotations

import torch

from workers.inference.engine.slots import DecodeStep


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two up to ``max_batch``, plus ``max_batch`` itself."""
    buckets: list[int] = []
    size = 1
    while size < max_batch:
        buckets.append(size)
        size *= 2
    buckets.append(max_batch)
    return tuple(buckets)


def bucket_for(used_slots: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket holding ``used_slots`` slots."""
    for bucket in buckets:
        if bucket >= used_slots:
            return bucket
    raise ValueError(f"{used_slots} slots exceed the largest bucket {buckets[-1]}")


class StepRunner:
    """Runs :class:`DecodeStep` for a bucket, replaying a CUDA graph where one was recorded.

    Parameters
    ----------
    step
        The decode step.
    buckets
        Batch buckets.
    use_graphs
        Record CUDA graphs (requires a CUDA device).
    """

    def __init__(self, step: DecodeStep, buckets: tuple[int, ...], *, use_graphs: bool) -> None:
        self.step = step
        self.buckets = buckets
        self.use_graphs = use_graphs
        self._graphs: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}

    def record_all(self) -> None:
        """Record every (bucket, mode) graph; call while no slot is running."""
        if not self.use_graphs:
            return
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for bucket in self.buckets:
                for _ in range(2):
                    self.step(bucket, greedy_only=False)
                    self.step(bucket, greedy_only=True)
        torch.cuda.current_stream().wait_stream(side)
        for bucket in reversed(self.buckets):
            for greedy_only in (True, False):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self.step(bucket, greedy_only=greedy_only)
                self._graphs[(bucket, greedy_only)] = graph
        torch.cuda.synchronize()

    def run(self, bucket: int, *, greedy_only: bool) -> None:
        """One decode step over the first ``bucket`` slots."""
        graph = self._graphs.get((bucket, greedy_only))
        if graph is not None:
            graph.replay()
        else:
            self.step(bucket, greedy_only=greedy_only)

    def release(self) -> None:
        """Drop the recorded graphs (and with them their memory pool)."""
        self._graphs.clear()

    @property
    def recorded(self) -> int:
        """Number of recorded graphs."""
        return len(self._graphs)


__all__ = ["StepRunner", "batch_buckets", "bucket_for"]
