"""Bootstrap confidence intervals of corpus-level metrics (500 seeded resamples by default)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

DEFAULT_RESAMPLES = 500
"""Resamples per interval, as LLaVA-Rad's evaluation uses."""

DEFAULT_SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A metric on the whole set with its bootstrap percentile interval."""

    value: float
    low: float
    high: float

    def as_dict(self, digits: int = 4) -> dict[str, float]:
        """``{"value", "ci_low", "ci_high"}`` rounded for JSON."""
        return {"value": round(self.value, digits), "ci_low": round(self.low, digits),
                "ci_high": round(self.high, digits)}


def resample_indices(size: int, resamples: int = DEFAULT_RESAMPLES,
                     seed: int = DEFAULT_SEED) -> NDArray[np.int64]:
    """Row ``r`` holds the sample indices of resample ``r`` (drawn with replacement).

    Raises
    ------
    ValueError
        If ``size`` or ``resamples`` is below 1.
    """
    if size < 1:
        raise ValueError("cannot bootstrap an empty set")
    if resamples < 1:
        raise ValueError("resamples must be at least 1")
    rng = np.random.default_rng(seed)
    return rng.integers(0, size, size=(resamples, size), dtype=np.int64)


def bootstrap(statistic: Callable[[NDArray[np.int64]], float], indices: NDArray[np.int64],
              confidence: float = 0.95) -> Estimate:
    """The statistic on all samples and its percentile interval over the resamples.

    Parameters
    ----------
    statistic
        Computes the metric from an array of sample indices (repeats allowed).
    indices
        Resamples from :func:`resample_indices`; the same array for every metric keeps their
        intervals paired.
    confidence
        Two-sided coverage of the interval.
    """
    if not 0 < confidence < 1:
        raise ValueError("confidence must lie strictly between 0 and 1")
    full = statistic(np.arange(indices.shape[1], dtype=np.int64))
    values = np.array([statistic(row) for row in indices], dtype=np.float64)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Estimate(float(full), float(low), float(high))


def bootstrap_many(statistics: Callable[[NDArray[np.int64]], dict[str, float]],
                   indices: NDArray[np.int64], confidence: float = 0.95,
                   progress: Callable[[str, float], None] | None = None) -> dict[str, Estimate]:
    """Like :func:`bootstrap` for a function returning several named metrics at once.

    Parameters
    ----------
    statistics
        Computes every metric from an array of sample indices.
    indices
        Resamples from :func:`resample_indices`.
    confidence
        Two-sided coverage of the intervals.
    progress
        Called as ``(message, fraction)`` after each resample.
    """
    if not 0 < confidence < 1:
        raise ValueError("confidence must lie strictly between 0 and 1")
    full = statistics(np.arange(indices.shape[1], dtype=np.int64))
    samples: dict[str, list[float]] = {name: [] for name in full}
    for number, row in enumerate(indices, start=1):
        for name, value in statistics(row).items():
            samples[name].append(value)
        if progress is not None:
            progress(f"bootstrap {number}/{len(indices)}", number / len(indices))
    tail = (1 - confidence) / 2 * 100
    estimates = {}
    for name, value in full.items():
        low, high = np.percentile(np.asarray(samples[name], dtype=np.float64), [tail, 100 - tail])
        estimates[name] = Estimate(float(value), float(low), float(high))
    return estimates


__all__ = ["DEFAULT_RESAMPLES", "DEFAULT_SEED", "Estimate", "bootstrap", "bootstrap_many",
           "resample_indices"]
