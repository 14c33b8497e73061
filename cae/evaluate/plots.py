"""PNG plots of the CAE evaluation (matplotlib, Agg backend, no display needed).

One function per figure of the CAE paper's findings (Hao et al. 2025, arXiv 2505.03189):
the layer x multiplier sweep, per-item propensity curves (Tan et al. 2024), the sample
efficiency curve and the perplexity cost. Each takes the result dataclass and a path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cae.evaluate.behaviour import BehaviourResult, LayerSweep  # noqa: E402
from cae.evaluate.efficiency import EfficiencyResult  # noqa: E402
from cae.evaluate.perplexity import PerplexityResult  # noqa: E402
from cae.evaluate.shift import SetEffect  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_layer_sweep(sweep: LayerSweep, path: Path) -> Path:
    """Mean p(matching) vs multiplier, one line per layer (the chosen one bold)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for layer, res in zip(sweep.layers, sweep.results, strict=True):
        ax.plot(res.multipliers, res.mean_p_matching, marker="o",
                lw=2.5 if layer == sweep.best_layer else 1, label=f"layer {layer}")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set(xlabel="multiplier", ylabel="mean p(matching)", ylim=(0, 1),
           title=f"layer sweep (chosen: {sweep.best_layer})")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_propensity(res: BehaviourResult, path: Path) -> Path:
    """Per-item propensity vs multiplier (anti-steerable items red) and the mean."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for row, slope in zip(res.propensity, res.slopes, strict=True):
        ax.plot(res.multipliers, row, color="tab:red" if slope < 0 else "tab:blue",
                alpha=0.3, lw=0.8)
    mean = [sum(col) / len(col) for col in zip(*res.propensity, strict=True)]
    ax.plot(res.multipliers, mean, color="black", lw=2.5, label="mean")
    ax.set(xlabel="multiplier", ylabel="logit(matching) - logit(other)",
           title=f"steerability {res.steerability:.3g}, anti-steerable "
                 f"{res.anti_steerable_fraction:.0%}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_efficiency(res: EfficiencyResult, path: Path) -> Path:
    """Cosine to the full-data vector (and effect size) vs number of pairs."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for n, row in zip(res.sizes, res.cosines, strict=True):
        ax.scatter([n] * len(row), row, s=8, color="tab:blue", alpha=0.4)
    ax.plot(res.sizes, res.mean_cosine, marker="o", color="tab:blue", label="cosine to full")
    ax.axvline(res.n_flat_cosine, color="tab:blue", ls="--", lw=0.8)
    ax.set(xscale="log", xlabel="contrastive pairs n", ylabel="cosine",
           title=f"returns flatten at n={res.n_flat_cosine}")
    if res.mean_effect:
        twin = ax.twinx()
        twin.plot(res.sizes, res.mean_effect, marker="s", color="tab:orange", label="effect")
        twin.set_ylabel("effect (propensity shift)")
        twin.legend(fontsize=8, loc="lower right")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_perplexity(res: PerplexityResult, path: Path) -> Path:
    """Perplexity vs multiplier."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(res.multipliers, res.perplexity, marker="o")
    ax.axhline(res.baseline, color="grey", lw=0.5)
    ax.set(xlabel="multiplier", ylabel="perplexity",
           title=f"perplexity cost ({res.n_tokens} tokens)")
    return _save(fig, path)


def plot_shift(rows: list[SetEffect], path: Path) -> Path:
    """Effect per item set with its 95% interval (in-distribution first)."""
    fig, ax = plt.subplots(figsize=(5, 0.6 + 0.4 * len(rows)))
    ys = list(range(len(rows)))[::-1]
    for y, r in zip(ys, rows, strict=True):
        ax.errorbar(r.effect, y, xerr=[[r.effect - r.ci95[0]], [r.ci95[1] - r.effect]],
                    fmt="o", color="tab:blue" if r.metric == "p_matching" else "tab:green")
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_yticks(ys, [f"{r.name} ({r.metric})" for r in rows], fontsize=7)
    ax.set(xlabel="effect of steering (steered - unsteered)", title="in vs out of distribution")
    return _save(fig, path)


def plot_sizes(curves: dict[str, tuple[list[float], list[float]]], target_shift: float,
               path: Path) -> Path:
    """Perplexity increase vs behaviour shift (positive multipliers), one line per model."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (shift, increase) in curves.items():
        ax.plot(shift, increase, marker="o", label=name)
    ax.axvline(target_shift, color="grey", ls="--", lw=0.8)
    ax.set(xlabel="behaviour shift (mean p(matching) - unsteered)",
           ylabel="relative perplexity increase", title="degradation at equal behaviour shift")
    ax.legend(fontsize=8)
    return _save(fig, path)
