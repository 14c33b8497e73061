"""Model-size comparison: perplexity cost at an equal behaviour shift, per model.

The CAE paper (Hao et al. 2025, arXiv 2505.03189) finds that larger models degrade less
under steering. To compare models fairly the cost is read at the same behaviour change:
for each model the suite (``cae.evaluate.report.evaluate``) gives the mean p(matching) and
the perplexity per multiplier; the smallest positive multiplier whose shift
``mean_p(m) - mean_p(0)`` reaches ``target_shift`` is found by linear interpolation, and
the perplexity increase there (interpolated the same way) is the model's degradation.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cae.evaluate.report import EvalConfig, evaluate

logger = logging.getLogger(__name__)


def multiplier_at_shift(
    multipliers: Sequence[float], mean_p: Sequence[float], target_shift: float
) -> float | None:
    """Smallest m >= 0 where ``mean_p(m) - mean_p(0)`` reaches ``target_shift`` (linear
    interpolation between measured multipliers); None if it never does."""
    if target_shift <= 0:
        raise ValueError(f"target_shift must be positive, got {target_shift}")
    order = np.argsort(multipliers)
    ms, ps = np.asarray(multipliers, float)[order], np.asarray(mean_p, float)[order]
    if ms[0] > 0 or ms[-1] <= 0:
        raise ValueError("multipliers must span 0 and include a positive value")
    base = float(np.interp(0.0, ms, ps))
    xs = np.concatenate([[0.0], ms[ms > 0]])
    ys = np.concatenate([[0.0], ps[ms > 0] - base])
    for i in range(1, len(xs)):
        if ys[i] >= target_shift:
            frac = (target_shift - ys[i - 1]) / (ys[i] - ys[i - 1])
            return float(xs[i - 1] + frac * (xs[i] - xs[i - 1]))
    return None


@dataclass
class SizeRow:
    """One model's degradation."""

    model: str
    """Model name as given."""
    best_layer: int
    """Layer the sweep chose."""
    steerability: float
    """Steerability at that layer."""
    multiplier_at_shift: float | None
    """Multiplier reaching the target shift (None: not reached)."""
    perplexity_increase_at_shift: float | None
    """Relative perplexity increase at that multiplier (None: not reached)."""
    seed: int = 0
    """Seed of the run (split and draws)."""


def chosen_behaviour(results: dict[str, Any]) -> dict[str, Any]:
    """The chosen layer's behaviour on the test split (older results: its sweep row)."""
    if "behaviour" in results:
        return results["behaviour"]
    sweep = results["layer_sweep"]
    return sweep["results"][sweep["layers"].index(sweep["best_layer"])]


def degradation(results: dict[str, Any], target_shift: float, model: str) -> SizeRow:
    """A ``SizeRow`` from one model's ``results.json`` dict (needs the perplexity stage)."""
    if "perplexity" not in results:
        raise ValueError(f"{model}: the size comparison needs a perplexity corpus (--corpus)")
    sweep = results["layer_sweep"]
    best = chosen_behaviour(results)
    m = multiplier_at_shift(best["multipliers"], best["mean_p_matching"], target_shift)
    ppl = results["perplexity"]
    inc = None if m is None else float(np.interp(m, ppl["multipliers"], ppl["increase"]))
    return SizeRow(model, sweep["best_layer"], best["steerability"], m, inc)


def shift_cost_curve(results: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(behaviour shift, perplexity increase) at each positive multiplier of one model."""
    best = chosen_behaviour(results)
    ms, ps = np.asarray(best["multipliers"], float), np.asarray(best["mean_p_matching"], float)
    order = np.argsort(ms)
    base = float(np.interp(0.0, ms[order], ps[order]))
    ppl = results["perplexity"]
    pos = [m for m in ppl["multipliers"] if m > 0 and m in best["multipliers"]]
    shift = [float(ps[list(ms).index(m)] - base) for m in pos]
    return shift, [float(np.interp(m, ppl["multipliers"], ppl["increase"])) for m in pos]


def compare_sizes(
    cfg: EvalConfig, models: Sequence[str], target_shift: float = 0.05
) -> list[SizeRow]:
    """Run the suite on every model (``cfg.out/<model>/``) and write ``cfg.out/sizes.json``
    and ``cfg.out/sizes.png`` (perplexity increase vs behaviour shift per model, averaged
    over seeds); one row per model and seed, and per model the intervals over seeds.

    Example:
        >>> from cae.evaluate.config import EvalDatasets
        >>> rows = compare_sizes(EvalConfig("", "kind.jsonl", "out", datasets=EvalDatasets("neutral.txt")),
        ...                      ["organism:tiny", "organism:small"])  # doctest: +SKIP
    """
    if len(models) < 2:
        raise ValueError("a size comparison needs at least two models")
    from cae.evaluate.plots import plot_sizes
    from cae.evaluate.seeds import over_seeds

    rows: list[SizeRow] = []
    curves: dict[str, tuple[list[float], list[float]]] = {}
    summary: dict[str, Any] = {}
    for name in models:
        sub = Path(cfg.out) / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        results = evaluate(replace(cfg, model=name, out=str(sub)))
        runs = results.get("per_seed", [results])
        mine = [replace(degradation(r, target_shift, name), seed=s)
                for r, s in zip(runs, cfg.seed_list(), strict=True)]
        rows += mine
        per_seed = [shift_cost_curve(r) for r in runs]
        curves[name] = ([float(np.mean(c)) for c in zip(*(p[0] for p in per_seed), strict=True)],
                        [float(np.mean(c)) for c in zip(*(p[1] for p in per_seed), strict=True)])
        summary[name] = over_seeds([{"multiplier_at_shift": r.multiplier_at_shift,
                                     "perplexity_increase_at_shift":
                                         r.perplexity_increase_at_shift,
                                     "steerability": r.steerability} for r in mine])
        (Path(cfg.out) / "sizes.json").write_text(json.dumps(
            {"target_shift": target_shift, "seeds": cfg.seed_list(),
             "rows": [asdict(r) for r in rows], "over_seeds": summary,
             "curves": {k: {"shift": v[0], "perplexity_increase": v[1]}
                        for k, v in curves.items()}}, indent=1) + "\n")
    plot_sizes(curves, target_shift, Path(cfg.out) / "sizes.png")
    return rows
