"""Ground-truth scoring on the organism: network dissection of a feature's activation maps.

Network dissection (Bau et al. 2017, CVPR): a unit is binarised at a threshold and scored
against each concept's segmentation by IoU = |act & concept| / |act | concept|, summed over
the whole dataset; the unit's label is its best concept. Here the "segmentation" is the
organism's exact per-token ground truth (:meth:`sae_flux.organism.world.World.token_labels`:
a token shows a concept when at least ``concept_fraction`` of its pixels do), and a feature is
"on" at a token when its activation exceeds ``activation_threshold`` x the feature's maximum. The sparse
records of a max-activation index (top-k features per token) are streamed, so the scores
cover every indexed image at any dictionary size.

The VLM-free explainer of :mod:`sae_flux.interp.explain` (:class:`ConceptInterpreter`) uses
the best concept as the explanation, so the same detection scorer can be compared with IoU.

Legend: F = features, C = concepts, R = image-token rows of a shard, M = kept records.

Example:
    >>> labels = world_labels(prompts(512, seed=0), seed=0)  # doctest: +SKIP
    >>> result = dissect(IndexReader("idx-sae"), labels)  # doctest: +SKIP
    >>> result.summary(), result.best_concept[:5]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sae_flux.interp.config import DissectConfig
from sae_flux.interp.index import IndexReader
from sae_flux.interp.select import Selection

logger = logging.getLogger(__name__)

#: Token ground truth: global image id -> (concept names, fractions (h, w, C)).
Labels = Callable[[int], tuple[Sequence[str], np.ndarray]]


class Dissection(NamedTuple):
    """IoU of every (feature, concept) pair and each feature's best concept."""

    concepts: tuple[str, ...]
    iou_FC: Float[Tensor, "F C"]
    best_iou: Float[Tensor, " F"]
    best_concept: list[str]
    live: Tensor
    """Bool (F,): features that fired on some indexed token."""

    def summary(self, min_iou: float = 0.1) -> dict[str, Any]:
        """Distribution of best-concept IoU over live features and the distinct concepts covered."""
        best = self.best_iou[self.live]
        covered = {self.best_concept[f] for f in torch.nonzero(self.live).flatten().tolist()
                   if float(self.best_iou[f]) >= min_iou}
        quantiles = best.quantile(torch.tensor([0.25, 0.5, 0.75])).tolist() if len(best) else [0.0] * 3
        return {
            "features": int(len(self.live)), "live": int(self.live.sum()),
            "mean_iou": float(best.mean()) if len(best) else 0.0,
            "q25_iou": quantiles[0], "median_iou": quantiles[1], "q75_iou": quantiles[2],
            f"share_iou>={min_iou}": float((best >= min_iou).float().mean()) if len(best) else 0.0,
            "concepts_covered": len(covered), "concepts_total": len(self.concepts),
        }


def world_labels(prompts: Sequence[str], seed: int = 0, world: Any = None, split: str = "train") -> Labels:
    """Token ground truth of the organism scenes behind ``prompts`` (``world.prompts(n, seed)``).

    Raises ValueError when a prompt is not the caption of the scene it should come from.
    """
    from sae_flux.organism.world import World

    world = world or World()
    samples = list(world.examples(len(prompts), seed=seed, split=split))
    for i, (sample, text) in enumerate(zip(samples, prompts, strict=True)):
        if sample.caption != text:
            raise ValueError(
                f"prompt {i} {text!r} is not the scene world's caption {sample.caption!r} for seed {seed}: "
                "ground truth needs prompts from sae_flux.organism.world.prompts(n, seed)"
            )

    memo: dict[int, tuple[Sequence[str], np.ndarray]] = {}

    def labels(image: int) -> tuple[Sequence[str], np.ndarray]:
        if not 0 <= image < len(samples):
            raise IndexError(f"image {image} has no ground truth ({len(samples)} scenes)")
        if image not in memo:
            found = world.token_labels(samples[image].scene)
            memo[image] = (found.concepts, found.fractions_hwC)
        return memo[image]

    return labels


def dissect(index: IndexReader, labels: Labels, cfg: DissectConfig | None = None) -> Dissection:
    """Dataset-wide IoU of each feature's binarised map with each concept's token mask."""
    cfg = cfg or DissectConfig()
    if not index.state["shards"]:
        raise ValueError(f"index {index.path} has no records to dissect")
    top_k = int(index.state["config"]["top_k"])
    if top_k < index.width:
        logger.warning("index %s keeps the top %d of %d units per token: units outside a token's top %d count as 0 "
                       "there, so these IoUs are not exact; sae_flux.interp.calibrate scores dense units",
                       index.path, top_k, index.width, top_k)
    concepts = tuple(labels(int(index.state["shards"][0]["first_image"]))[0])
    level_F = cfg.activation_threshold * index.top["max_F"]
    inter_FC, act_F, area_C = torch.zeros(index.width, len(concepts)), torch.zeros(index.width), torch.zeros(len(concepts))
    for rec in index.shards():
        images = rec["image"].unique()
        masks = []
        for image in images.tolist():
            names, fractions_hwC = labels(int(image))
            if tuple(names) != concepts:
                raise ValueError(f"image {image} has concepts {names}, others {concepts}")
            if fractions_hwC.shape[:2] != index.grid:
                raise ValueError(f"ground truth grid {fractions_hwC.shape[:2]} != index grid {index.grid}")
            masks.append(torch.from_numpy(fractions_hwC.reshape(-1, len(names)) >= cfg.concept_fraction))
        mask_RC = torch.cat(masks).float()
        on = rec["value"] > level_F[rec["feature"]]
        local = torch.searchsorted(images, rec["image"][on])
        row_M = local * (index.grid[0] * index.grid[1]) + rec["token"][on]
        inter_FC.index_add_(0, rec["feature"][on], mask_RC[row_M])
        act_F += torch.bincount(rec["feature"][on], minlength=index.width).float()
        area_C += mask_RC.sum(0)
    iou_FC = inter_FC / (act_F[:, None] + area_C[None, :] - inter_FC).clamp(min=1e-9)
    best_iou, best = iou_FC.max(1)
    return Dissection(concepts, iou_FC, best_iou, [concepts[c] for c in best.tolist()], act_F > 0)


def map_iou(maps_IHW: Tensor, masks_IHW: Tensor, threshold: float) -> float:
    """IoU of ``maps > threshold x max`` with boolean ``masks`` over a stack of images."""
    on = maps_IHW > threshold * float(maps_IHW.max())
    union = (on | masks_IHW).sum()
    return float((on & masks_IHW).sum() / union) if union else 0.0


class ConceptInterpreter:
    """VLM-free explainer/scorer: explanation = best concept; rating = share of the image showing it."""

    name = "concept"
    uses_images = False

    def __init__(self, dissection: Dissection, labels: Labels, concept_fraction: float = 0.5) -> None:
        self.dissection = dissection
        self.labels = labels
        self.concept_fraction = concept_fraction

    def explain(self, index: IndexReader, selection: Selection) -> Any:
        from sae_flux.interp.explain import Explanation

        concept = self.dissection.best_concept[selection.feature]
        return Explanation(concept, [f"IoU {float(self.dissection.best_iou[selection.feature]):.3f}"])

    def rate(self, explanation: str, index: IndexReader, images: Sequence[int]) -> list[float]:
        """1 when some token of the image shows the concept, else its largest token fraction."""
        ratings = []
        for image in images:
            names, fractions_hwC = self.labels(int(image))
            if explanation not in names:
                raise ValueError(f"{explanation!r} is not a concept of this world ({list(names)})")
            top = float(fractions_hwC[..., list(names).index(explanation)].max())
            ratings.append(1.0 if top >= self.concept_fraction else top)
        return ratings
