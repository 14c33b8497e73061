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


def stage_interp(state: Any) -> None:
    """The demo stage: ground-truth interpretation of every dictionary and the block's neurons."""
    from sae_flux.report import Figure

    out = state.out / "interp"
    grid = state.flux.grid()
    min_tokens = max(1, round(6 * grid[0] * grid[1] / 256))  # the paper's 6 of 256 tokens, rescaled
    cards = state.sizes.samples if state.sizes is not None else 4
    cfg = CompareConfig(DissectConfig(), SelectConfig(min_tokens=min_tokens), cards=cards, seed=state.cfg.seed)
    labels = world_labels(state.prompts, seed=state.cfg.seed)
    result = compare(demo_indexes(state, out), labels, out, state.flux, state.prompts, cfg)
    state.report.numbers["interp"] = result.rows
    state.report.section(
        "Interpretation against ground truth",
        text=f"Each feature binarised at {cfg.dissect.activation_threshold} x its maximum and compared with every "
        f"concept's token mask over all {len(state.prompts)} images (network dissection IoU); "
        f"covered = distinct best concepts with IoU >= {cfg.dissect.min_iou}. Detection: the paper's "
        f"5 positives (>= {min_tokens} tokens over threshold) + 5 distractors, explanation = best concept. "
        "Browse every dictionary's feature cards in interp/browser.html.",
        table=result.rows,
        figures=[Figure(str(p.relative_to(state.out)), "SAE vs ITDA vs neurons") for p in result.figures],
        html='<p><a href="interp/browser.html">Feature browser</a></p>',
    )
