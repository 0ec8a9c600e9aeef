"""Progress bars for long command-line work (model import, training, evaluation)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm


class FractionProgress:
    """A bar for callbacks of the form ``(message, fraction)``.

    Use as a context manager; pass :meth:`update` as the callback.
    """

    def __init__(self, title: str) -> None:
        self._bar = tqdm(total=1000, desc=title, unit="", file=sys.stderr,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
        self._done = 0

    def update(self, message: str, fraction: float) -> None:
        """Move the bar to ``fraction`` (0–1) and show ``message``."""
        target = int(max(0.0, min(1.0, fraction)) * 1000)
        if target > self._done:
            self._bar.update(target - self._done)
            self._done = target
        self._bar.set_postfix_str(message[:60], refresh=True)

    def __enter__(self) -> FractionProgress:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._bar.close()


def step_progress(title: str) -> tuple[Callable[[int, int, float], None], Callable[[], None]]:
    """A bar for callbacks of the form ``(step, total_steps, loss)``; returns (callback, close)."""
    bar: list[tqdm] = []

    def update(step: int, total: int, loss: float) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc=title, unit="step", file=sys.stderr))
        bar[0].n = step
        bar[0].set_postfix(loss=f"{loss:.3f}", refresh=True)

    def close() -> None:
        if bar:
            bar[0].close()

    return update, close
