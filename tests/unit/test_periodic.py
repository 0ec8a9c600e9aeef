"""The periodic thread behind assembly, reconciliation and exports."""

from __future__ import annotations

import threading

from node.periodic import PeriodicThread


def test_a_failing_pass_does_not_stop_the_loop_and_wake_cuts_the_wait() -> None:
    """A pass that raises is logged and the next one still runs; wake() runs it now."""
    calls: list[int] = []
    second = threading.Event()

    def step() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("database hiccup")
        second.set()

    loop = PeriodicThread("test", 3600, step)
    loop.start()
    try:
        loop.wake()
        assert second.wait(5), "the pass after the failure did not run on wake()"
    finally:
        loop.stop()
    assert len(calls) == 2


def test_a_pass_that_asks_for_more_runs_again_at_once() -> None:
    """Returning True (a full batch) skips the wait."""
    done = threading.Event()
    remaining = [3]

    def step() -> bool:
        remaining[0] -= 1
        if remaining[0] == 0:
            done.set()
        return remaining[0] > 0

    loop = PeriodicThread("test", 3600, step)
    loop.start()
    try:
        assert done.wait(5), "the loop waited a whole period between full batches"
    finally:
        loop.stop()
    assert not loop.stopping
