"""Confidence intervals for the rates and mean scores the project reports.

- :func:`wilson`: the Wilson score interval of a binomial proportion (Wilson 1927), right at 0
  and 1 and with few trials, where the normal approximation fails (a hit rate of 4 / 4 images is
  not "100% +- 0").
- :func:`bootstrap_mean`: a seeded percentile bootstrap of a mean (Efron 1979), for scores in
  [0, 1] that are not counts (detection, fuzzing).

Example:
    >>> [round(x, 3) for x in wilson(4, 4)]
    [0.51, 1.0]
    >>> low, high = bootstrap_mean([0.2, 0.4, 0.9], seed=0)
    >>> 0.2 <= low <= high <= 0.9
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054


class Interval(NamedTuple):
    low: float
    high: float


def wilson(successes: int, trials: int, z: float = Z95) -> Interval:
    """Wilson score interval of ``successes / trials`` (NaN, NaN for no trials)."""
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} / {trials}")
    if trials == 0:
        return Interval(math.nan, math.nan)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_mean(values: Sequence[float], seed: int = 0, resamples: int = 2000, level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (NaN, NaN when empty)."""
    data = np.asarray([float(v) for v in values], dtype=np.float64)
    if len(data) == 0:
        return Interval(math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(1)
    tail = (1 - level) / 2
    return Interval(float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)))
