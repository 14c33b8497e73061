"""Ground-truth interpretation of several dictionaries side by side, and the demo's stage for it.

The comparison of Shabalin et al. 2025 (arXiv 2505.24360, ``../shared/research.md`` s.1): SAE
latents, ITDA atoms and MLP neurons of the same block, each indexed
(:mod:`sae_flux.interp.index`), scored against the organism's exact token labels
(:mod:`sae_flux.interp.dissect`), explained by their best concept and detection-scored through
the same scorer a VLM would use (:mod:`sae_flux.interp.explain`), then reported as a table,
histograms side by side and an HTML feature browser. No network is needed.

Example:
    >>> result = compare(  # doctest: +SKIP
    ...     {"sae": IndexReader("idx-sae"), "neurons": IndexReader("idx-mlp")},
    ...     world_labels(prompts), out="interp-out", flux=Flux.organism(), prompts=prompts)
    >>> result.rows  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from sae_flux.cache import CacheReader
from sae_flux.interp.browser import Card, write_browser
from sae_flux.interp.calibrate import index_source
from sae_flux.interp.dissect import (
    ConceptInterpreter,
    DissectConfig,
    Dissection,
    Labels,
    dissect,
    world_labels,
)
from sae_flux.interp.explain import FeatureResult, interpret
from sae_flux.interp.index import (
    IndexConfig,
    IndexReader,
    build_index,
    cache_images,
    dictionary_source,
    flux_images,
    neuron_source,
    write_images,
)
from sae_flux.interp.select import SelectConfig, Selection, render_card, select

logger = logging.getLogger(__name__)


@dataclass
class CompareConfig:
    """How dictionaries are scored and shown."""

    dissect: DissectConfig
    select: SelectConfig
    cards: int = 6
    """Feature cards per dictionary in the browser (spread over the IoU ranking)."""
    n_distractors: int = 5
    """Distractor images of the detection scorer (the paper's 5)."""
    seed: int = 0
    """Seed of distractor choice and of image generation."""

    def __post_init__(self) -> None:
        if self.cards < 0 or self.n_distractors < 1:
            raise ValueError("cards must be >= 0 and n_distractors >= 1")


class Comparison(NamedTuple):
    """Per-dictionary summary rows, dissections, detection results and the browser page."""

    rows: list[dict[str, Any]]
    dissections: dict[str, Dissection]
    detections: dict[str, list[FeatureResult]]
    browser: Path
    figures: list[Path]


def compare(
    indexes: dict[str, IndexReader], labels: Labels, out: str | Path, flux: Any, prompts: list[str],
    cfg: CompareConfig | None = None,
) -> Comparison:
    """Dissect, detection-score and render every dictionary of ``indexes`` into ``out``."""
    cfg = cfg or CompareConfig(DissectConfig(), SelectConfig())
    out = Path(out)
    (out / "cards").mkdir(parents=True, exist_ok=True)
    rows, dissections, detections, chosen = [], {}, {}, {}
    for name, index in indexes.items():
        index.images_dir = out / "images"
        found = dissect(index, labels, cfg.dissect)
        interpreter = ConceptInterpreter(found, labels, cfg.dissect.concept_fraction)
        live = torch.nonzero(found.live).flatten().tolist()
        results = interpret(index, interpreter, live, select_cfg=cfg.select,
                            n_distractors=cfg.n_distractors, seed=cfg.seed)
        scores = torch.tensor([r.detection.score for r in results if r.detection is not None])
        rows.append({"dictionary": name, "kind": index.source["kind"], **found.summary(cfg.dissect.min_iou),
                     "explained": len(results),
                     "mean_detection": float(scores.mean()) if len(scores) else float("nan")})
        dissections[name], detections[name] = found, results
        chosen[name] = [select(index, f, cfg.select) for f in _card_features(found, results, cfg.cards)]
    needed = sorted({i for selections in chosen.values() for s in selections for i in s.images})
    if needed:
        write_images(next(iter(indexes.values())), flux, prompts, needed, seed=cfg.seed, batch_size=64)
    cards = [card for name, index in indexes.items()
             for card in _cards(index, dissections[name], detections[name], chosen[name], out, prompts)]
    figures = [_histograms(dissections, detections, out)]
    browser = write_browser(out, cards, title="Feature browser (organism ground truth)",
                            intro="Top images chosen by the paper's rule, heatmap alpha = sqrt of the "
                            "normalised activation; explanation = best-IoU concept; detection = the "
                            "paper's score with concept-presence ratings.")
    return Comparison(rows, dissections, detections, browser, figures)


def _card_features(found: Dissection, results: list[FeatureResult], count: int) -> list[int]:
    """``count`` explained features spread evenly over the best-IoU ranking (best first)."""
    explained = [r.feature for r in results]
    if not explained or count == 0:
        return []
    ranked = sorted(explained, key=lambda f: -float(found.best_iou[f]))
    picks = torch.linspace(0, len(ranked) - 1, min(count, len(ranked))).round().long().tolist()
    return [ranked[i] for i in dict.fromkeys(picks)]


def _cards(index: IndexReader, found: Dissection, results: list[FeatureResult], selections: list[Selection],
           out: Path, prompts: list[str]) -> list[Card]:
    by_feature = {r.feature: r for r in results}
    cards = []
    for selection in tqdm(selections, desc=f"cards {index.name}", unit="card"):
        f = selection.feature
        result = by_feature[f]
        file = out / "cards" / f"{index.name}-{f}.png"
        render_card(index, selection, title=f"{index.name} #{f}: {found.best_concept[f]}").save(file)
        scores = {"IoU": float(found.best_iou[f]), "density": result.density}
        if result.detection is not None:
            scores["detection"] = result.detection.score
        details = [f"image {i}: {prompts[i]}" for i in selection.images]
        cards.append(Card(index.name, f, str(file.relative_to(out)), result.explanation.pattern, scores, details))
    return cards


def _histograms(dissections: dict[str, Dissection], detections: dict[str, list[FeatureResult]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    bins = torch.linspace(0, 1, 21).tolist()
    for name, found in dissections.items():
        axes[0].hist(found.best_iou[found.live].tolist(), bins=bins, histtype="step", linewidth=1.6,
                     label=name, density=True)
        scores = [r.detection.score for r in detections[name] if r.detection is not None]
        axes[1].hist(scores, bins=bins, histtype="step", linewidth=1.6, label=name, density=True)
    axes[0].set(title="best-concept IoU (dissection)", xlabel="IoU", ylabel="density of features")
    axes[1].set(title="detection score (concept explanation)", xlabel="score")
    axes[0].legend()
    fig.tight_layout()
    path = out / "scores.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# -- the demo stage ------------------------------------------------------------------------------


def demo_indexes(state: Any, out: Path) -> dict[str, IndexReader]:
    """Indexes of the demo's dictionaries (from its cache) and of the MLP neurons of the same block."""
    indexes = {}
    for name, path in (state.dictionaries or {}).items():
        source = dictionary_source(path, name)
        indexes[name] = build_index(IndexConfig(out=str(out / f"index-{name}"), top_n=16),
                                    source, cache_images(state.cache), hook=state.hook)
    kind, block, stream = state.hook.split(".")[:3]
    if kind == "double" and stream == "img":
        mlp = f"double.{block}.mlp"
        source = neuron_source(mlp, state.flux.width(mlp))
        if mlp in CacheReader(state.cache, state.hook).manifest.widths:
            images = cache_images(state.cache, mlp)
        else:  # the demo cache holds only the residual stream: capture the neurons live
            images = flux_images(state.flux, state.prompts, mlp, seed=state.cfg.seed, step=state.cfg.step)
        indexes["neurons"] = build_index(IndexConfig(out=str(out / "index-neurons"), top_n=16),
                                         source, images, hook=mlp)
    return indexes


#: Bootstrap resamples of the demo's calibrated table (the CLI's default is 200).
DEMO_BOOTSTRAP = 50
#: World and noise seeds of the demo's held-out scoring images and of its selection images.
HELD_OUT_SEED, SELECT_SEED = 10_000, 20_000


def stage_interp(state: Any) -> None:
    """The demo stage: every dictionary and the block's neurons scored against ground truth, with floors and ceiling.

    The table is the calibrated dissection (:func:`sae_flux.interp.calibrate.calibrate`: held-out
    images, units chosen per concept on other images, random floors dense and as sparse as each
    dictionary, probe ceiling, bootstrap intervals); the feature cards and browser come from the
    max-activation indexes (:func:`compare`).
    """
    out = state.out / "interp"
    grid = state.flux.grid()
    min_tokens = max(1, round(6 * grid[0] * grid[1] / 256))  # the paper's 6 of 256 tokens, rescaled
    cards = state.sizes.samples if state.sizes is not None else 4
    cfg = CompareConfig(DissectConfig(), SelectConfig(min_tokens=min_tokens), cards=cards, seed=state.cfg.seed)
    labels = world_labels(state.prompts, seed=state.cfg.seed)
    indexes = demo_indexes(state, out)
    compare(indexes, labels, out, state.flux, state.prompts, cfg)
    images = state.sizes.heldout_prompts if state.sizes is not None else 64
    rows, conclusion = calibrated_rows(state.flux, [index_source(i) for i in indexes.values()], images)
    state.report.numbers["interp"] = rows
    state.report.section(
        "Interpretation against ground truth",
        text=f"Calibrated dissection on {images} held-out organism images (units chosen per concept on {images} "
        "other images): AP = average precision of each factor concept's chosen unit (shape, colour, position, "
        "size; chance = the concept's share of tokens, 1-4%), mean over the 16 concepts; area-matched IoU = the "
        "unit on at its top a_c of tokens (a_c = the concept's share); [2.5-97.5% bootstrap over images]. "
        "Floors: random directions of the same count (random-N) and the same directions as sparse as the "
        "dictionary, unit by unit (random-rate-N); ceiling: one logistic probe per concept. "
        "Browse every dictionary's feature cards in interp/browser.html.",
        table=rows,
        conclusion=conclusion,
        html='<p><a href="interp/browser.html">Feature browser</a></p>',
    )


def calibrated_rows(flux: Any, units: list[Any], images: int) -> tuple[list[dict[str, Any]], str]:
    """The calibrated table of ``units`` (readable columns) and one sentence on what it says."""
    from sae_flux.interp.calibrate import calibrate, capture_set
    from sae_flux.interp.config import ScoreConfig

    hooks = list(dict.fromkeys(u.hook for u in units))
    held = capture_set(flux, hooks, images, seed=HELD_OUT_SEED)
    select = capture_set(flux, hooks, images, seed=SELECT_SEED)
    result = calibrate(units, held, select, ScoreConfig(bootstrap=DEMO_BOOTSTRAP))
    rows = [{"hook": r["hook"], "units": r["units"], "live / count": f"{r['live']} / {r['n']}",
             "AP (factor concepts)": r["ap_best"], "area-matched IoU": r["iou_best"],
             "concepts with a detector (IoU > 0.5)": r["iou_concepts"], "AUROC": r["auroc_best"]}
            for r in result.rows]
    return rows, calibrated_conclusion(result.scores, [u.name for u in units])


def calibrated_conclusion(scores: list[Any], names: list[str]) -> str:
    """One sentence: where each scored set's AP lies against its floors (intervals apart or not) and the ceiling."""
    by_name = {s.name: s for s in scores}
    ceiling = max((s for s in scores if s.kind == "probe"), key=lambda s: s.summary["ap_best"])
    parts = []
    for name in names:
        units = by_name[name]
        floors = [s for s in scores if s.name in (f"random-{units.bau_FC.shape[0]}",
                                                  f"random-rate-{units.bau_FC.shape[0]} ({name})")]
        lo, hi = units.intervals.get("ap_best", (units.summary["ap_best"],) * 2)
        verdicts = []
        for floor in floors:
            f_lo, f_hi = floor.intervals.get("ap_best", (floor.summary["ap_best"],) * 2)
            side = "above" if lo > f_hi else "below" if hi < f_lo else "level with"
            kind = "sparse" if floor.name.startswith("random-rate") else "dense"
            verdicts.append(f"{side} its {kind} random floor {floor.summary['ap_best']:.2f}")
        parts.append(f"{name} AP {units.summary['ap_best']:.2f} ({', '.join(verdicts)})")
    return (f"Against the organism's ground truth, {'; '.join(parts)}; a linear probe per concept reaches "
            f"{ceiling.summary['ap_best']:.2f} (above / below: the 95% intervals do not overlap; level: they do, "
            "so the data cannot tell them apart).")
