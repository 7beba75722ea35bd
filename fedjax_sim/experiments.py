"""Statistics across seeds: paired differences with bootstrap intervals.

A claim in this repository is a statement about an interval over seeds, not about two means:
methods compared on the same seeds (same partition, initialization and sampled keys) give paired
per-seed differences, and `paired_bootstrap` puts a percentile bootstrap interval on their mean.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

BOOTSTRAP_SEED = 0


class PairedDifference(NamedTuple):
    """mean of the per-seed differences a - b, its [lo, hi] bootstrap interval, the number of
    seeds, and in how many a > b."""

    mean: float
    lo: float
    hi: float
    n: int
    wins: int


def paired_bootstrap(a, b, level: float = 0.95, resamples: int = 10_000,
                     seed: int = BOOTSTRAP_SEED) -> PairedDifference:
    """Percentile bootstrap interval of mean(a - b) over seeds.

    Args:
      a, b: [S] per-seed values of two methods on the same seeds (S >= 1).
      level: interval coverage; resamples: bootstrap draws; seed: numpy seed (fixed, so a table
        regenerated from the same runs gives the same interval).

    Returns:
      `PairedDifference`: the seeds are resampled with replacement ``resamples`` times, the mean
      difference of each resample taken, and the (1 - level)/2 and (1 + level)/2 quantiles of
      those means (numpy's default linear interpolation) form the interval.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"a and b must be equal-length 1-D per-seed values, got {a.shape} and {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(resamples, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return PairedDifference(float(d.mean()), float(lo), float(hi), len(d), int(np.sum(d > 0)))
