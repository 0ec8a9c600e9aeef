"""A background thread that runs one step periodically (assembly, reconciler, exports)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class PeriodicThread:
    """Run ``step`` every ``period_seconds`` in a daemon thread until stopped.

    A failing step is logged and the loop goes on (a database hiccup must not stop
    assembly or delivery). A step that returns ``True`` asks to run again at once
    (more work is waiting); :meth:`wake` cuts the current wait short.

    Parameters
    ----------
    name
        Thread name, also the log event prefix.
    period_seconds
        Pause between steps.
    step
        The work of one pass.
    """

    def __init__(self, name: str, period_seconds: float, step: Callable[[], bool | None]) -> None:
        self.name = name
        self.period_seconds = period_seconds
        self._step = step
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        """Whether the running thread is being stopped (its current pass may end early)."""
        return self._stop.is_set() and self._thread is not None

    def _run(self, run_now: bool) -> None:
        if not run_now:
            self._wake.wait(self.period_seconds)
        while not self._stop.is_set():
            self._wake.clear()
            again = False
            try:
                again = bool(self._step())
            except Exception:
                logger.exception(f"{self.name}_pass_failed")
            if not again:
                self._wake.wait(self.period_seconds)

    def start(self, *, run_now: bool = True) -> None:
        """Start the thread; the first pass runs at once unless ``run_now`` is false."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(run_now,), name=self.name,
                                        daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run the next pass now rather than at the end of the period."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current pass and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
