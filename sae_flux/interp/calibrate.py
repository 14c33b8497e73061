"""Calibrated network dissection on the organism: dense unit maps, standard thresholds, floor and ceiling.

Network dissection (Bau et al. 2017, CVPR) scores a unit against a concept's segmentation by
binarising the unit at a per-unit threshold and taking the IoU, summed over a dataset; a unit is
a *detector* of a concept when that IoU passes a bar, and a representation is summarised by how
many distinct concepts have a detector and how many units are detectors, never by a mean over
units (which measures unit count and size). Here the segmentation is the organism's exact
per-token ground truth (:meth:`sae_flux.organism.world.World.token_labels`: a token shows a
concept when at least ``concept_fraction`` of its pixels do) and every unit is read **densely**
from activations captured on **held-out** images (:func:`capture_set`; never a max-activation
index, whose per-token top-k truncates wide unit sets).

Scores of every (unit, concept) pair, on the N tokens of the scoring images:

- ``bau``: Bau et al.'s per-unit top quantile: the unit is on at its top ``quantile`` (0.5%)
  of tokens (at most that many; ties at the cut are off); IoU with the concept; detector bar
  0.04 (theirs). A fixed 0.5% cannot reach a high IoU on a concept covering more than 0.5% of
  tokens (IoU <= 0.005 / area), so on this world it suits only small concepts.
- ``iou`` (area-matched, the area-aware variant): for a concept covering a share a_c of the
  scoring tokens, the unit is on at its top a_c of tokens; without ties this IoU is r / (2 - r)
  with r its precision = recall. Detector bar ``matched_bar`` (0.5: precision = recall = 2/3).
- ``auroc`` and ``ap`` (average precision): threshold-free rankings of the tokens by the
  unit's value; ties are grouped (one threshold per distinct value, as sklearn does). Chance is
  0.5 and the concept's prevalence respectively.

Every score is rank-based per unit, so it does not depend on a unit's scale, sign convention of
a bias, or centring. Summaries (:func:`score_units`) use the *factor* concepts (shape, colour,
position, size); ``object`` and the two backgrounds (:data:`CONTEXT`) are reported apart.
Intervals are bootstrap percentiles over scoring images: per-unit thresholds are fixed from the
full set, the IoU counts are re-summed with the resample's image weights for every unit, and the
ranking scores are recomputed for the ``candidates`` best units of each concept.

Controls computed by the same code on the same images: :func:`random_source` (random directions,
both signs, as many units as the set compared: the floor) and :func:`probe_source` (one
logistic probe per concept trained on separate images: the ceiling).

Legend: N scoring tokens, I images, T tokens per image, D activation width, F or K units,
C concepts, R rows (unit, concept pairs), B bootstrap resamples.

Example:
    >>> flux = Flux.organism()  # doctest: +SKIP
    >>> held_out = capture_set(flux, ["double.1.img"], n_images=256, seed=10_000)  # doctest: +SKIP
    >>> probe_set = capture_set(flux, ["double.1.img"], n_images=256, seed=20_000)  # doctest: +SKIP
    >>> sae = dictionary_source("demo-out/dictionaries/sae-topk")  # doctest: +SKIP
    >>> rows = [score_units(s, held_out).row() for s in (sae, random_source("double.1.img", 128,  # doctest: +SKIP
    ...         sae.width), probe_source(probe_set, "double.1.img"))]
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sae_flux.interp.config import ScoreConfig
from sae_flux.interp.index import FeatureSource, IndexReader, dictionary_source, neuron_source

logger = logging.getLogger(__name__)

#: Concepts reported apart from the factor concepts: they cover large areas or every object.
CONTEXT = ("object", "background:black", "background:white")
#: Rows of (unit, concept) pairs ranked at once (bounds memory: ROWS x N floats per array).
ROWS = 512


class ScoringSet(NamedTuple):
    """Dense activations of scoring images with their token ground truth."""

    acts: dict[str, Float[Tensor, "N D"]]
    """Hook -> activations of every image token (image-major, row-major tokens)."""
    masks_NC: Bool[Tensor, "N C"]
    image_N: Int[Tensor, " N"]
    """Image index (0..I-1) of every token."""
    concepts: tuple[str, ...]
    prompts: list[str]
    seed: int

    @property
    def num_images(self) -> int:
        return int(self.image_N.max()) + 1


def capture_set(
    flux: Any, hooks: Sequence[str], n_images: int, seed: int, step: int = 0, world: Any = None,
    concept_fraction: float = 0.5, batch_size: int = 64,
) -> ScoringSet:
    """Activations of ``hooks`` on ``n_images`` organism scenes of world seed ``seed``, with their labels.

    Scene ``i`` is ``World.examples(n, seed)``'s i-th and is generated from noise seed ``seed + i``
    at denoising step ``step``; a seed other than the training cache's gives held-out images.
    """
    from sae_flux.organism.world import World

    world = world or World()
    samples = list(world.examples(n_images, seed=seed))
    texts = [s.caption for s in samples]
    captured = flux.capture(texts, list(hooks), seed=seed, steps=[step], batch_size=batch_size)
    labels = [world.token_labels(s.scene) for s in samples]
    grid = tuple(captured.grid)
    if labels[0].fractions_hwC.shape[:2] != grid:
        raise ValueError(f"ground truth grid {labels[0].fractions_hwC.shape[:2]} != the model's token grid {grid}")
    concepts = labels[0].concepts
    fractions = np.stack([lab.fractions_hwC.reshape(-1, len(concepts)) for lab in labels])
    masks_NC = torch.from_numpy(fractions >= concept_fraction).reshape(-1, len(concepts))
    acts = {h: captured[h][:, 0].reshape(-1, captured[h].shape[-1]).float() for h in hooks}
    image_N = torch.arange(n_images).repeat_interleave(grid[0] * grid[1])
    return ScoringSet(acts, masks_NC, image_N, tuple(concepts), texts, seed)


def index_source(index: IndexReader) -> FeatureSource:
    """The dense units behind a max-activation index: its dictionary re-loaded, or its neurons.

    The index's records keep only the top ``top_k`` units per token; scoring re-encodes every
    unit from activations instead, so a score never depends on ``top_k``.
    """
    record = index.source
    if record["kind"] == "neurons":
        return neuron_source(record["hook"], int(record["width"]), name=record["name"])
    return dictionary_source(record["path"], record["name"])


# -- controls ----------------------------------------------------------------------------------


def random_source(hook: str, d_in: int, count: int, seed: int = 0) -> FeatureSource:
    """``count`` random unit-norm directions of ``hook``'s space read as units, half of them negated.

    Directions are Gaussian; unit ``2j`` reads ``x . d_j`` and unit ``2j + 1`` reads ``-x . d_j``,
    so the floor does not depend on which sign a dictionary happens to use.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    signed_DF = _signed_directions(d_in, count, seed)
    return FeatureSource(f"random-{count}", hook, d_in, count, "random", encode=lambda x: x.float() @ signed_DF)


def _signed_directions(d_in: int, count: int, seed: int) -> Float[Tensor, "D F"]:
    """``count`` unit-norm Gaussian directions, unit ``2j + 1`` the negation of unit ``2j``."""
    gen = torch.Generator().manual_seed(seed)
    dirs_DK = torch.randn(d_in, (count + 1) // 2, generator=gen)
    dirs_DK /= dirs_DK.norm(dim=0, keepdim=True)
    return torch.stack([dirs_DK, -dirs_DK], dim=2).reshape(d_in, -1)[:, :count].contiguous()


def topk_random_source(hook: str, centre_D: Tensor, count: int, k: int, seed: int = 0) -> FeatureSource:
    """A random dictionary with a TopK SAE's nonlinearity: :func:`random_source`'s directions, per token the
    ``k`` largest projections of ``x - centre`` kept (ReLU'd), every other unit 0.

    The sparse floor of a TopK dictionary of ``count`` latents: its units share the dictionary's
    L0 and, like its latents, tie at zero on the tokens they do not fire on.
    """
    if not 1 <= k <= count:
        raise ValueError(f"need 1 <= k <= count, got k={k}, count={count}")
    signed_DF = _signed_directions(len(centre_D), count, seed)

    def encode(x: Tensor) -> Tensor:
        values_NF = (x.float() - centre_D) @ signed_DF
        top = values_NF.topk(k, dim=1)
        return torch.zeros_like(values_NF).scatter_(1, top.indices, top.values.relu())

    return FeatureSource(f"random-top{k}-{count}", hook, len(centre_D), count, "random", encode=encode)


def rate_matched_source(hook: str, fit_ND: Tensor, rates_F: Tensor, seed: int = 0) -> FeatureSource:
    """A random dictionary as sparse as a given one, unit by unit: :func:`random_source`'s directions, unit
    ``f`` on (ReLU of the projection minus a threshold) at its top ``rates_F[f]`` of the tokens ``fit_ND``.

    With ``rates_F`` a dictionary's firing rates, each random unit covers the share of tokens one
    of its units covers, so an area-capped score (AP of a unit that is 0 on most tokens) caps both
    alike; a unit that never fires (rate 0) is 0 everywhere.
    """
    count = len(rates_F)
    signed_DF = _signed_directions(fit_ND.shape[1], count, seed)
    proj_NF = fit_ND.float() @ signed_DF
    position_F = ((1 - rates_F.float().clamp(0, 1)) * (len(proj_NF) - 1)).round().long()
    cut_F = proj_NF.sort(dim=0).values.gather(0, position_F[None])[0]
    cut_F = torch.where(rates_F > 0, cut_F, torch.inf)

    def encode(x: Tensor) -> Tensor:
        return (x.float() @ signed_DF - cut_F).relu().nan_to_num(0.0)

    return FeatureSource(f"random-rate-{count}", hook, fit_ND.shape[1], count, "random", encode=encode)


def fit_probes(
    acts_ND: Float[Tensor, "N D"], masks_NC: Bool[Tensor, "N C"], l2: float = 1e-3, steps: int = 60,
) -> tuple[Tensor, Tensor]:
    """One logistic-regression probe per concept: ``(W_DC, b_C)`` over raw inputs.

    Fitted on standardised inputs with an L2 penalty ``l2`` (per concept, on the standardised
    weights), starting from the closed-form ridge solution and refined by ``steps`` L-BFGS
    iterations on the cross-entropy.
    """
    mean_D, std_D = acts_ND.mean(0), acts_ND.std(0).clamp(min=1e-6)
    z_ND = (acts_ND - mean_D) / std_D
    y_NC = masks_NC.float()
    gram_DD = z_ND.T.double() @ z_ND.double() + l2 * len(z_ND) * torch.eye(z_ND.shape[1], dtype=torch.float64)
    ridge_DC = torch.linalg.solve(gram_DD, z_ND.T.double() @ (y_NC - y_NC.mean(0)).double()).float().contiguous()
    w_DC = (4 * ridge_DC).requires_grad_()  # the logistic slope at 0 is 1/4
    b_C = torch.logit(y_NC.mean(0).clamp(1e-4, 1 - 1e-4)).requires_grad_()
    opt = torch.optim.LBFGS([w_DC, b_C], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z_ND @ w_DC + b_C, y_NC)
        loss = loss + l2 * w_DC.pow(2).sum() / y_NC.shape[1]
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        raw_DC = w_DC / std_D[:, None]
        return raw_DC.clone(), (b_C - mean_D @ raw_DC).clone()


def probe_source(train: ScoringSet, hook: str) -> FeatureSource:
    """The linear-probe ceiling: unit ``c`` is concept ``c``'s logistic probe, trained on ``train``'s images."""
    w_DC, b_C = fit_probes(train.acts[hook], train.masks_NC)
    return FeatureSource(f"probe-{hook}", hook, w_DC.shape[0], w_DC.shape[1], "probe",
                         encode=lambda x: x.float() @ w_DC + b_C)


# -- scoring -----------------------------------------------------------------------------------


class UnitScores(NamedTuple):
    """Every (unit, concept) score of one unit set on the scoring images, and its summary with intervals."""

    name: str
    kind: str
    concepts: tuple[str, ...]
    bau_FC: Float[Tensor, "F C"]
    iou_FC: Float[Tensor, "F C"]
    auroc_FC: Float[Tensor, "F C"]
    ap_FC: Float[Tensor, "F C"]
    chosen: dict[str, list[int]]
    """Per score (bau, iou, auroc, ap): the unit chosen for each concept (on the selection images)."""
    live: int
    """Units that are non-constant on the scoring tokens."""
    summary: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    samples: dict[str, Tensor] = {}
    """Per summary: its value under every image weighting (row 0 the full set, then the resamples)."""

    def row(self, digits: int = 3) -> dict[str, Any]:
        """A table row: each summary as ``value [lo, hi]`` (counts as integers)."""
        out: dict[str, Any] = {"units": self.name, "kind": self.kind, "n": len(self.bau_FC), "live": self.live}
        for key, value in self.summary.items():
            lo, hi = self.intervals.get(key, (math.nan, math.nan))
            if key.endswith(("concepts", "units")):
                out[key] = f"{value:.0f} [{lo:.0f}, {hi:.0f}]"
            else:
                out[key] = f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
        return out

    def best(self, score: str = "ap") -> dict[str, tuple[int, float]]:
        """Per concept: (chosen unit, its score on the scoring images) under ``score`` (bau, iou, auroc or ap)."""
        table = self._tables()[score]
        units = self.chosen[score]
        return {c: (u, float(table[u, i])) for i, (c, u) in enumerate(zip(self.concepts, units, strict=True))}

    def _tables(self) -> dict[str, Tensor]:
        return {"bau": self.bau_FC, "iou": self.iou_FC, "auroc": self.auroc_FC, "ap": self.ap_FC}


class _Tables(NamedTuple):
    """Full-data scores of a unit set, its dense values and the per-image counts its intervals re-sum."""

    values_FN: Tensor
    bau_FC: Tensor
    iou_FC: Tensor
    auroc_FC: Tensor
    ap_FC: Tensor
    counts: tuple[Tensor, Tensor, Tensor, Tensor]
    """inter_bau_FCI, on_bau_FI, inter_FCI, on_FCI."""


def encode(source: FeatureSource, acts_ND: Tensor, chunk: int = 4096) -> Float[Tensor, "F N"]:
    """Dense unit values of every token (units x tokens), encoded ``chunk`` tokens at a time."""
    parts = [source.encode(acts_ND[i:i + chunk]).float() for i in range(0, len(acts_ND), chunk)]
    values_NF = torch.cat(parts)
    if values_NF.shape[1] != source.width:
        raise ValueError(f"{source.name!r} produced {values_NF.shape[1]} units, expected {source.width}")
    return values_NF.T.contiguous()


def score_units(
    source: FeatureSource, data: ScoringSet, cfg: ScoreConfig | None = None, select: ScoringSet | None = None,
) -> UnitScores:
    """Score every unit of ``source`` against every concept of ``data`` (dense), with bootstrap intervals.

    The unit reported for each concept is chosen on ``select`` (other images, e.g. the probes'
    training images) and scored on ``data``, so a set of many units gains nothing from picking
    its luckiest unit on the images it is scored on; without ``select`` it is chosen on ``data``
    itself (in-sample, optimistic).
    """
    cfg = cfg or ScoreConfig()
    full = _tables(source, data, cfg)
    chooser = full if select is None else _tables(source, select, cfg)
    chosen = {name: table.nan_to_num(-1.0).argmax(0) for name, table in
              (("bau", chooser.bau_FC), ("iou", chooser.iou_FC), ("auroc", chooser.auroc_FC), ("ap", chooser.ap_FC))}
    factor_C = torch.tensor([c not in CONTEXT for c in data.concepts])
    n_img = data.num_images
    weights_BI = torch.cat([torch.ones(1, n_img), _resamples(n_img, cfg.bootstrap, cfg.bootstrap_seed)])
    bau_BFC = _iou(weights_BI, *full.counts[:2], _areas(data))
    iou_BFC = _iou(weights_BI, *full.counts[2:], _areas(data))
    ap_BC, auroc_BC = _boot_ranking(full.values_FN, chosen, data, weights_BI)
    stats = _summaries(bau_BFC, iou_BFC, ap_BC, auroc_BC, chosen, factor_C, data.concepts, cfg)
    intervals = {k: percentiles(v[1:]) for k, v in stats.items()} if cfg.bootstrap else {}
    values_FN = full.values_FN
    live = int((values_FN.amax(1) > values_FN.amin(1)).sum())
    return UnitScores(source.name, source.kind, data.concepts, full.bau_FC, full.iou_FC, full.auroc_FC, full.ap_FC,
                      {k: v.tolist() for k, v in chosen.items()}, live, {k: float(v[0]) for k, v in stats.items()},
                      intervals, stats)


def _areas(data: ScoringSet) -> Tensor:
    n_img = data.num_images
    return data.masks_NC.float().reshape(n_img, -1, data.masks_NC.shape[1]).sum(1)


def _tables(source: FeatureSource, data: ScoringSet, cfg: ScoreConfig) -> _Tables:
    """All (unit, concept) scores of ``source`` on ``data`` and the per-image counts behind the IoUs."""
    if source.hook and source.hook not in data.acts:
        raise ValueError(f"{source.name!r} reads {source.hook!r}; the scoring set holds {sorted(data.acts)}")
    values_FN = encode(source, data.acts[source.hook or next(iter(data.acts))])
    masks_NC = data.masks_NC.float()
    n_img = data.num_images
    k_bau = max(1, math.ceil(cfg.quantile * len(data.image_N)))
    k_C = masks_NC.sum(0).round().long()
    step = max(1, ROWS // len(data.concepts))
    counts, ranks = [], []
    for start in range(0, len(values_FN), step):
        chunk_KN = values_FN[start:start + step]
        sorted_KN, order_KN = chunk_KN.sort(dim=1, descending=True, stable=True)
        counts.append(_counts(chunk_KN, sorted_KN, data.masks_NC, n_img, k_bau, k_C))
        ranks.append(_ranking_all(sorted_KN, order_KN, masks_NC))
    joined = tuple(torch.cat(parts) for parts in zip(*counts, strict=True))
    auroc_FC, ap_FC = (torch.cat(parts) for parts in zip(*ranks, strict=True))
    ones_I = torch.ones(1, n_img)
    bau_FC = _iou(ones_I, joined[0], joined[1], _areas(data))[0]
    iou_FC = _iou(ones_I, joined[2], joined[3], _areas(data))[0]
    return _Tables(values_FN, bau_FC, iou_FC, auroc_FC, ap_FC, joined)  # type: ignore[arg-type]


def _counts(
    values_KN: Tensor, sorted_KN: Tensor, masks_NC: Tensor, n_img: int, k_bau: int, k_C: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-image intersections and on-counts: Bau's top-quantile cut and the area-matched cuts."""
    k, n = values_KN.shape
    c = masks_NC.shape[1]
    masks_ITC = masks_NC.float().reshape(n_img, -1, c)
    on_KN = (values_KN > sorted_KN[:, min(k_bau, n - 1)][:, None]).float()
    inter_bau_KCI = torch.bmm(on_KN.reshape(k, n_img, -1).transpose(0, 1), masks_ITC).permute(1, 2, 0)
    on_KCN = (values_KN[:, None, :] > sorted_KN[:, k_C.clamp(max=n - 1)][..., None]).float()
    inter_KCI = (on_KCN * masks_NC.T.float()).reshape(k, c, n_img, -1).sum(-1)
    return (inter_bau_KCI, on_KN.reshape(k, 1, n_img, -1).sum(-1), inter_KCI,
            on_KCN.reshape(k, c, n_img, -1).sum(-1))


def _iou(weights_BI: Tensor, inter_FCI: Tensor, on_FCI: Tensor, area_IC: Tensor) -> Float[Tensor, "B F C"]:
    """Dataset IoU with images weighted by ``weights_BI`` (a resample's multiplicities)."""
    inter_BFC = torch.einsum("bi,fci->bfc", weights_BI, inter_FCI)
    on_BFC = torch.einsum("bi,fci->bfc", weights_BI, on_FCI)
    area_BC = weights_BI @ area_IC
    return inter_BFC / (on_BFC + area_BC[:, None, :] - inter_BFC).clamp(min=1e-9)


def _resamples(n_img: int, count: int, seed: int) -> Float[Tensor, "B I"]:
    gen = torch.Generator().manual_seed(seed)
    picks_BI = torch.randint(0, n_img, (count, n_img), generator=gen)
    return torch.zeros(count, n_img).scatter_add_(1, picks_BI, torch.ones(count, n_img))


def _tie_bounds(sorted_KN: Tensor) -> tuple[Tensor, Tensor]:
    """First and last position of each value's run of ties, in descending order."""
    n = sorted_KN.shape[1]
    pos_N = torch.arange(n).expand_as(sorted_KN)
    new_KN = torch.ones_like(sorted_KN, dtype=torch.bool)
    new_KN[:, 1:] = sorted_KN[:, 1:] != sorted_KN[:, :-1]
    start_KN = torch.where(new_KN, pos_N, 0).cummax(1).values
    last_KN = torch.ones_like(new_KN)
    last_KN[:, :-1] = new_KN[:, 1:]
    end_KN = torch.where(last_KN, pos_N, n).flip(1).cummin(1).values.flip(1)
    return start_KN, end_KN


def ranking(y_RN: Tensor, w_RN: Tensor, start_RN: Tensor, end_RN: Tensor) -> tuple[Tensor, Tensor]:
    """AUROC and average precision of rows already in descending score order (tied runs grouped).

    ``y`` is the concept label, ``w`` a token weight (1, or a bootstrap multiplicity); a positive
    shares its run's precision (taken at the run's end) and counts tied negatives as half.
    """
    wy_RN = w_RN * y_RN
    tp_RN, fp_RN = wy_RN.cumsum(1), (w_RN - wy_RN).cumsum(1)
    tp_end, fp_end = tp_RN.gather(1, end_RN), fp_RN.gather(1, end_RN)
    fp_before = torch.where(start_RN > 0, fp_RN.gather(1, (start_RN - 1).clamp(min=0)), 0.0)
    pos_R, neg_R = tp_RN[:, -1], fp_RN[:, -1]
    ap_R = (wy_RN * tp_end / (tp_end + fp_end).clamp(min=1e-12)).sum(1) / pos_R
    wrong_R = (wy_RN * 0.5 * (fp_before + fp_end)).sum(1)
    auroc_R = 1 - wrong_R / (pos_R * neg_R)
    return auroc_R, ap_R


def _ranking_all(sorted_KN: Tensor, order_KN: Tensor, masks_NC: Tensor) -> tuple[Tensor, Tensor]:
    """AUROC (Mann-Whitney on tie midranks) and AP of every unit of a chunk for every concept, unit weights."""
    k, n = sorted_KN.shape
    start_KN, end_KN = _tie_bounds(sorted_KN)
    ascending_KN = torch.empty(k, n).scatter_(1, order_KN, n - 0.5 * (start_KN + end_KN).float())
    pos_C = masks_NC.sum(0)
    neg_C = n - pos_C
    auroc_KC = (ascending_KN @ masks_NC - pos_C * (pos_C + 1) / 2) / (pos_C * neg_C)
    y_CKN = masks_NC.T[:, order_KN]
    tp_end_CKN = y_CKN.cumsum(-1).gather(-1, end_KN.expand_as(y_CKN))
    ap_CK = (y_CKN * tp_end_CKN / (end_KN + 1).float()).sum(-1) / pos_C[:, None]
    return auroc_KC, ap_CK.T


def _boot_ranking(
    values_FN: Tensor, chosen: dict[str, Tensor], data: ScoringSet, weights_BI: Tensor,
) -> tuple[Tensor, Tensor]:
    """AP and AUROC of each concept's chosen unit under every image weighting (row 0: the full set)."""
    ap_B: list[Tensor] = []
    auroc_B: list[Tensor] = []
    concept_C = torch.arange(len(data.concepts))
    for name in ("ap", "auroc"):
        sorted_CN, order_CN = values_FN[chosen[name]].sort(dim=1, descending=True, stable=True)
        start_CN, end_CN = _tie_bounds(sorted_CN)
        y_CN = data.masks_NC[order_CN, concept_C[:, None]].float()
        for weights_I in weights_BI:
            auroc_C, ap_C = ranking(y_CN, weights_I[data.image_N][order_CN], start_CN, end_CN)
            (ap_B if name == "ap" else auroc_B).append(ap_C if name == "ap" else auroc_C)
    return torch.stack(ap_B), torch.stack(auroc_B)


def _summaries(
    bau_BFC: Tensor, iou_BFC: Tensor, ap_BC: Tensor, auroc_BC: Tensor, chosen: dict[str, Tensor], factor_C: Tensor,
    concepts: tuple[str, ...], cfg: ScoreConfig,
) -> dict[str, Tensor]:
    """Per-weighting summaries: factor concepts (chosen unit's score, detectors) and the context concepts apart."""
    out: dict[str, Tensor] = {}
    concept_C = torch.arange(len(concepts))
    for name, table, bar in (("bau", bau_BFC, cfg.bau_bar), ("iou", iou_BFC, cfg.matched_bar)):
        best_BC = table[:, chosen[name], concept_C]
        out[f"{name}_best"] = best_BC[:, factor_C].mean(1)
        out[f"{name}_concepts"] = (best_BC[:, factor_C] > bar).sum(1).float()
        out[f"{name}_units"] = (table[..., factor_C].max(2).values > bar).sum(1).float()
    out["ap_best"] = ap_BC[:, factor_C].nanmean(1)
    out["auroc_best"] = auroc_BC[:, factor_C].nanmean(1)
    for c, concept in enumerate(concepts):
        if concept in CONTEXT:
            out[f"ap[{concept}]"] = ap_BC[:, c]
            out[f"iou[{concept}]"] = iou_BFC[:, chosen["iou"][c], c]
    return out


def percentiles(values_B: Tensor) -> tuple[float, float]:
    """2.5 and 97.5 percentiles of the finite values (NaN, NaN when none is finite)."""
    finite = values_B[torch.isfinite(values_B)]
    if not len(finite):
        return math.nan, math.nan
    lo, hi = torch.quantile(finite.double(), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return lo, hi


# -- one table ---------------------------------------------------------------------------------


class Calibration(NamedTuple):
    """Rows of the table (controls beside every unit set) and the per-concept chosen-unit AP."""

    scores: list[UnitScores]
    rows: list[dict[str, Any]]
    concepts: list[dict[str, Any]]


def calibrate(
    units: Sequence[FeatureSource], held_out: ScoringSet, select: ScoringSet, cfg: ScoreConfig | None = None,
) -> Calibration:
    """Score ``units`` with their floors and ceiling (probes).

    Floors: random directions of each set's size and space, read densely (``random-N``), and for
    every set that is not neurons the same directions cut to fire unit by unit as often as the
    set's units fire on ``select`` (``random-rate-N (NAME)``, :func:`rate_matched_source`): a
    random dictionary as sparse as the one scored. Every score is computed by
    :func:`score_units` on ``held_out`` with units chosen on ``select`` (which also trains the probes).
    """
    cfg = cfg or ScoreConfig()
    scored: list[tuple[str, UnitScores]] = []
    for hook in dict.fromkeys(u.hook for u in units):
        d_in = held_out.acts[hook].shape[1]
        controls = [random_source(hook, d_in, n, cfg.bootstrap_seed) for n in dict.fromkeys(u.width for u in units
                                                                                            if u.hook == hook)]
        mine = [u for u in units if u.hook == hook]
        for source in [*controls, *(x for u in mine for x in (u, *_sparse_floor(u, select, cfg.bootstrap_seed))),
                       probe_source(select, hook)]:
            found = score_units(source, held_out, cfg, select=select)
            logger.info("%s on %s: AP %.3f, area-matched IoU %.3f (factor concepts, chosen units)", source.name,
                        hook, found.summary["ap_best"], found.summary["iou_best"])
            scored.append((hook, found))
    scores = [found for _, found in scored]
    concepts = [{"concept": c, **{f"{hook} {s.name}": round(s.best("ap")[c][1], 3) for hook, s in scored}}
                for c in held_out.concepts]
    return Calibration(scores, [{"hook": hook, **s.row()} for hook, s in scored], concepts)


def _sparse_floor(source: FeatureSource, select: ScoringSet, seed: int) -> list[FeatureSource]:
    """The rate-matched random floor of a dictionary (none for neurons: they are dense, their floor is ``random-N``)."""
    if source.kind == "neurons":
        return []
    fit_ND = select.acts[source.hook]
    rates_F = (encode(source, fit_ND) != 0).float().mean(1)
    floor = rate_matched_source(source.hook, fit_ND, rates_F, seed)
    return [dataclasses.replace(floor, name=f"{floor.name} ({source.name})")]


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of ``rows`` (the keys of the first row are the columns)."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
