"""Intervals over seeds: the same evaluation repeated with other pair draws and splits.

One seed of ``cae eval`` fixes the train / validation / test split and the subset draws, and
its intervals cover items only. Repeating the run over several seeds (``--seeds``) and
taking, for every number of the per-seed summaries, the mean and a Student-t 95% interval
over seeds measures how much of a result is the luck of one split. Legend: S seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
"""Two-sided 95% Student-t quantiles by degrees of freedom."""


def t975(df: int) -> float:
    """The 97.5% Student-t quantile (tabled; Cornish-Fisher's first term past 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df in T975:
        return T975[df]
    if df > 30:
        z = 1.959963984540054
        return z + (z ** 3 + z) / (4 * df)
    below = max(k for k in T975 if k < df)
    above = min(k for k in T975 if k > df)
    frac = (df - below) / (above - below)
    return T975[below] + frac * (T975[above] - T975[below])


def seed_interval(values: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Mean over seeds and its Student-t 95% interval (equal ends for one seed)."""
    if not values:
        raise ValueError("no seeds to average")
    n, mean = len(values), sum(values) / len(values)
    if n == 1:
        return mean, (mean, mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return mean, (mean - half, mean + half)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x))


def over_seeds(summaries: Sequence[Any]) -> Any:
    """Every number of the per-seed summaries as ``{"mean", "ci95", "values"}`` (mean and
    interval over the seeds that have a number there; ``values`` keeps each seed's, None
    included). Dicts are walked by the keys all seeds share; lists of numbers are averaged
    element by element (``{"mean": [...], "values": [...]}``).

    Example:
        >>> out = over_seeds([{"s": 1.0, "p": {"0": 0.4}}, {"s": 3.0, "p": {"0": 0.6}}])
        >>> out["s"]["mean"], out["p"]["0"]["mean"]
        (2.0, 0.5)
    """
    first = summaries[0]
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(s, dict) and k in s for s in summaries)]
        return {k: over_seeds([s[k] for s in summaries]) for k in keys}
    if all(_is_number(s) or s is None for s in summaries) and any(_is_number(s) for s in summaries):
        numbers = [float(s) for s in summaries if _is_number(s)]
        mean, ci = seed_interval(numbers)
        return {"mean": mean, "ci95": list(ci), "values": list(summaries)}
    if all(isinstance(s, list) and s and all(_is_number(x) for x in s) for s in summaries) \
            and len({len(s) for s in summaries}) == 1:
        cols = list(zip(*summaries, strict=True))
        return {"mean": [sum(c) / len(c) for c in cols], "values": list(summaries)}
    return {"values": list(summaries)}
