"""The steering section of the demo report (``sae_flux.demo``): a grid and a small table.

For two concepts of the organism's world (a colour and a shape), the best-matching feature of
each demo dictionary (by correlation with the concept's token masks, :mod:`.concepts`) and the
difference-of-means direction are added, at equal norm, on the object's tokens of held-out
captions that do not mention the concept, over the paper's first 5/7 of the steps (Shabalin et
al. 2025, arXiv 2505.24360); the pixel judge scores every image (:mod:`.measure`). One batched
pipeline call does it all (about 60 images with 4 targets per concept; the demo's quick setting
draws 2, ``DemoSizes.samples``).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import _sae_flux_shared.commit as commit
from sae_flux.intervals import wilson
from sae_flux.report import Figure
from sae_flux.steer import feature_direction
from sae_flux.steering.concepts import best_features, concept_tokens_from_cache, difference_of_means
from sae_flux.steering.grid import default_steps, grid_image
from sae_flux.steering.measure import Condition, sweep, targets

logger = logging.getLogger(__name__)

DEMO_CONCEPTS = ("red", "triangle")
DEMO_SCALES = (0.8, 1.6)
DEMO_TARGETS = 4
"""Held-out targets per concept when the demo does not size them (``DemoSizes.samples``)."""


def stage_steering(state: Any) -> None:
    """Add the steering section (grid + table) to ``state.report``; images under ``out/steering``."""
    from sae_flux.dictionary import load_dictionary

    cfg = state.cfg
    n_targets = state.sizes.samples if state.sizes is not None else DEMO_TARGETS
    data = concept_tokens_from_cache(state.cache, n_scenes=min(len(state.prompts), 128), seed=cfg.seed)
    dictionaries = {name: load_dictionary(path) for name, path in (state.dictionaries or {}).items()}
    first = default_steps(state.flux.defaults.num_inference_steps)
    out = state.out / "steering"
    out.mkdir(exist_ok=True)
    rows, figures = [], []
    for concept in DEMO_CONCEPTS:
        directions = {name: feature_direction(d, best_features(d, data, (concept,))[concept].feature)
                      for name, d in dictionaries.items()}
        directions["diff-of-means"] = difference_of_means(data, concept)
        conditions = [Condition(m, direction, s, first) for m, direction in directions.items() for s in DEMO_SCALES]
        chosen = targets(concept, n_targets, seed=cfg.seed)
        result = sweep(state.flux, state.hook, chosen, conditions, cfg.seed)
        rows += [with_interval(row, n_targets) for row in result.rows]
        grid = [[imgs[i] for imgs in result.images] for i in range(n_targets)]
        labels = ["unsteered"] + [f"{_short(c.method)}\nx{c.scale:g}" for c in conditions]
        path = out / f"{concept}.png"
        row_labels = [" ".join(s.caption.split()[:4]) for s in chosen.samples]
        image = grid_image(grid, labels, cell=64, row_labels=row_labels, corner=f"toward {concept}\ntarget caption")
        commit.write_with(path, partial(image.save, format="PNG"))
        figures.append(Figure(str(path.relative_to(state.out)), f"steering toward {concept!r}: rows are held-out "
                              f"captions without it (first words on the left); columns: unsteered, then each "
                              f"direction at x{DEMO_SCALES} the mean token norm"))
    state.report.numbers["steering"] = rows
    state.report.section(
        "Steering",
        text=f"Each direction (the best-correlated feature of each dictionary, and the difference of means) is "
        f"unit-normalised and added at a multiple of the mean token norm on the object's tokens (dilated by one) of "
        f"{state.hook}, on the first {first} of {state.flux.defaults.num_inference_steps} steps. hit = share of "
        f"images where the pixel judge sees the concept; outside = mean absolute pixel change outside the region; "
        f"clean = share of on-palette pixels. Hit rates come with 95% Wilson intervals over the {n_targets} images "
        "per cell.",
        table=[{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
        figures=figures,
        conclusion=conclusion(rows),
    )


def with_interval(row: dict[str, Any], images: int) -> dict[str, Any]:
    """The row with its image count and the 95% Wilson interval of its hit rate."""
    low, high = wilson(round(row["hit"] * images), images)
    return {**row, "images": images, "hit_low": low, "hit_high": high}


def conclusion(rows: list[dict[str, Any]]) -> str:
    """One sentence: the best direction's hit rate against the unsteered one, with intervals."""
    lines = []
    for concept in dict.fromkeys(r["concept"] for r in rows):
        mine = [r for r in rows if r["concept"] == concept]
        base = next(r for r in mine if r["method"] == "none")
        best = max((r for r in mine if r["method"] != "none"), key=lambda r: r["hit"], default=None)
        if best is None:
            continue
        separated = best["hit_low"] > base["hit_high"]
        lines.append(f"toward {concept!r} the best direction ({best['method']} x{best['scale']:g}) hits "
                     f"{best['hit']:.0%} [{best['hit_low']:.0%}, {best['hit_high']:.0%}] of images vs "
                     f"{base['hit']:.0%} unsteered ({'a clear effect' if separated else 'not distinguishable at this sample size'})")
    return "; ".join(lines) + "." if lines else ""


def _short(method: str) -> str:
    return "mean-diff" if method == "diff-of-means" else method[:10]
