"""Fair comparisons on the organism: SAEs, ITDAs and MLP neurons at matched size, L0 and FVU (``sae-flux interp sweep``).

One command trains every dictionary of a :class:`~sae_flux.interp.config.SweepConfig` on the
same training scenes (world and noise seed 0, the training cache's scenes) with several seeds,
measures each on held-out scenes (live units, L0, FVU, dead fraction) and scores it with the
calibrated dissection (:func:`sae_flux.interp.calibrate.score_units`: units chosen per concept on
selection images, scored on the held-out ones) beside three floors and the probe ceiling:

- ``dense`` floor: random directions, same count, both signs (:func:`~sae_flux.interp.calibrate.random_source`);
- ``sparse`` floor: the same directions cut to fire unit by unit as often as the dictionary's
  units fire on the training tokens (:func:`~sae_flux.interp.calibrate.rate_matched_source`):
  a random dictionary with the same sparsity, whose units tie at zero where they are off as a
  dictionary's latents do, so the AP cap a small firing area puts on a unit applies to both;
- ``topk`` floor (TopK SAEs): random directions through the SAE's own TopK k
  (:func:`~sae_flux.interp.calibrate.topk_random_source`);
- ceiling: one logistic probe per concept (:func:`~sae_flux.interp.calibrate.probe_source`).

Every summary is pooled over seeds with a two-level bootstrap (seeds drawn with replacement,
and the scoring images resampled with weights shared by every unit set, so differences are
paired). Families are compared at matched live-unit count, L0 and held-out FVU (:func:`matched_pairs`:
nearest setting of the other family within ``tolerance``) and along each family's frontier
(:func:`frontier`). Writes ``sweep.json`` (config, every run, every pooled row) and ``sweep.md``.

Example:
    >>> cfg = SweepConfig(out="sweep", seeds=[0, 1, 2])  # doctest: +SKIP
    >>> result = run_sweep(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sae_flux.interp.calibrate import (
    ScoringSet,
    UnitScores,
    capture_set,
    markdown,
    percentiles,
    probe_source,
    random_source,
    rate_matched_source,
    score_units,
    topk_random_source,
)
from sae_flux.interp.config import ScoreConfig, SweepConfig
from sae_flux.interp.index import FeatureSource, dictionary_source, neuron_source

logger = logging.getLogger(__name__)

#: World and noise seeds of the three image sets (training scenes = the training cache's).
TRAIN_SEED, HELD_SEED, SELECT_SEED = 0, 10_000, 20_000
#: Summaries pooled over seeds (factor concepts, chosen units).
POOLED = ("ap_best", "iou_best", "auroc_best", "bau_best", "iou_concepts")
#: Axes of the matched comparisons; FVU applies to dictionaries of the residual only.
AXES = ("live", "l0", "fvu")
#: Tokens of the training set a sparse floor's per-unit thresholds are fitted on.
FIT_TOKENS = 16_384


class Setting(NamedTuple):
    """One dictionary setting of the sweep (trained once per seed)."""

    family: str
    """sae, itda or neurons (the families compared)."""
    name: str
    """Short label, e.g. ``topk-256x8``, ``itda-32@0.6/256``, ``neurons-top8``."""
    kind: str
    """topk, batchtopk, itda, neurons, neurons-topk, neurons-subset."""
    params: dict[str, Any]


def parse_settings(cfg: SweepConfig, mlp_width: int | None) -> list[Setting]:
    """Every setting a config asks for, specs checked (a bad spec is refused in one line)."""
    out = []
    for kind, specs in (("topk", cfg.topk), ("batchtopk", cfg.batchtopk)):
        for spec in specs:
            size, k = _sae_spec(spec)
            out.append(Setting("sae", f"{kind}-{size}x{k}", kind, {"d_sae": size, "k": k, "normalize": "whiten"}))
    if cfg.normalizations and cfg.topk:
        size, k = _sae_spec(cfg.topk[0])
        for norm in cfg.normalizations:
            if norm not in ("none", "standardize", "whiten"):
                raise ValueError(f"--normalizations {norm!r}: use none, standardize or whiten")
            if norm != "whiten":
                out.append(Setting("sae", f"topk-{size}x{k}-{norm}", "topk", {"d_sae": size, "k": k, "normalize": norm}))
    for spec in cfg.itda:
        match = re.fullmatch(r"(\d+)@([0-9.]+)/(\d+)", spec)
        if not match:
            raise ValueError(f"--itda {spec!r} is not L0@THRESHOLD/BATCH (e.g. 32@0.6/256)")
        l0, threshold, batch = int(match[1]), float(match[2]), int(match[3])
        if l0 < 1 or batch < 1 or not 0 < threshold <= 1:
            raise ValueError(f"--itda {spec!r}: need L0 >= 1, 0 < THRESHOLD <= 1, BATCH >= 1")
        out.append(Setting("itda", f"itda-{spec}", "itda", {"l0": l0, "threshold": threshold, "batch": batch}))
    if mlp_width is not None:
        if cfg.all_neurons:
            out.append(Setting("neurons", "neurons", "neurons", {}))
        for k in cfg.neuron_ks:
            if not 1 <= k <= mlp_width:
                raise ValueError(f"--neuron-ks {k} must be in [1, {mlp_width}]")
            out.append(Setting("neurons", f"neurons-top{k}", "neurons-topk", {"k": k}))
        for size in cfg.neuron_subsets:
            if not 1 <= size <= mlp_width:
                raise ValueError(f"--neuron-subsets {size} must be in [1, {mlp_width}]")
            out.append(Setting("neurons", f"neurons-sub{size}", "neurons-subset", {"size": size}))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"the sweep names a setting twice: {sorted(n for n in names if names.count(n) > 1)}")
    return out


def _sae_spec(spec: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", spec)
    if not match or not 1 <= int(match[2]) <= int(match[1]):
        raise ValueError(f"SAE setting {spec!r} is not LATENTSxK with 1 <= K <= LATENTS (e.g. 256x8)")
    return int(match[1]), int(match[2])


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """One setting at one seed: where it is saved, its held-out measurements and its scores with floors."""

    setting: Setting
    seed: int
    path: str
    """Dictionary folder (empty for neurons)."""
    width: int
    live: int
    """Units that fire (are non-zero) on at least one held-out token."""
    l0: float
    """Mean non-zero units per held-out token."""
    fvu: float | None
    """Held-out fraction of variance unexplained (None for neurons: they reconstruct nothing)."""
    dead_fraction: float
    """Units that never fire on the held-out tokens."""
    train_dead_fraction: float | None
    """Dead fraction the training run measured on its own window (SAEs)."""
    scores: dict[str, UnitScores] = field(default_factory=dict)
    """``units`` and its floors: ``dense``, ``sparse`` and, for TopK settings, ``topk``; for dictionaries also
    ``dense read`` (the encoder's directions read densely, :func:`dense_read`)."""
    chosen_rate: float = math.nan
    """Mean over factor concepts of the AP-chosen unit's firing rate on the held-out tokens."""
    chosen_recall: float = math.nan
    """Mean over factor concepts of the share of the concept's tokens where its AP-chosen unit fires at all."""

    def record(self) -> dict[str, Any]:
        return {"setting": self.setting.name, "family": self.setting.family, "seed": self.seed, "path": self.path,
                "width": self.width, "live": self.live, "l0": round(self.l0, 3),
                "fvu": None if self.fvu is None else round(self.fvu, 4), "dead_fraction": round(self.dead_fraction, 4),
                "train_dead_fraction": self.train_dead_fraction, "chosen_rate": round(self.chosen_rate, 4),
                "chosen_recall": round(self.chosen_recall, 4),
                **{f"{role}:{key}": round(s.summary[key], 4) for role, s in self.scores.items() for key in POOLED}}


class Sets(NamedTuple):
    train: ScoringSet
    held: ScoringSet
    select: ScoringSet


def _firing(source: FeatureSource, acts_ND: Tensor) -> tuple[Tensor, float]:
    """(per-unit firing rate, mean non-zero units per token) of ``source`` on ``acts``."""
    values_NF = torch.cat([source.encode(acts_ND[i:i + 4096]) for i in range(0, len(acts_ND), 4096)])
    fires_NF = values_NF != 0
    return fires_NF.float().mean(0), float(fires_NF.sum(1).float().mean())


def _held_metrics(dictionary: Any, acts_ND: Tensor) -> tuple[float, float, Tensor]:
    """(FVU, L0, firing rate per unit) of a dictionary on held-out activations."""
    from sae_flux.metrics import evaluate

    metrics = evaluate(dictionary, [acts_ND])
    return metrics.fvu, metrics.l0, metrics.density_F


def train_setting(setting: Setting, seed: int, cfg: SweepConfig, sets: Sets, out: Path) -> tuple[FeatureSource, Any, float | None]:
    """Train (or build) one dictionary; returns its source, the in-memory dictionary and its training dead fraction."""
    acts_ND = sets.train.acts[cfg.hook]
    path = out / "dictionaries" / f"{setting.name.replace('/', '_')}-s{seed}"
    if setting.kind == "itda":
        import itda

        p = setting.params
        order = torch.randperm(len(acts_ND), generator=torch.Generator().manual_seed(seed))
        build_cfg = itda.BuildConfig(target_l0=p["l0"], loss_threshold=p["threshold"], encoder="gp", nonnegative=True,
                                     seed=seed, max_atoms=8192)
        dictionary = itda.build(acts_ND[order].split(p["batch"]), build_cfg, progress=False,
                                metadata={"hook_name": cfg.hook, "model_name": cfg.model})
        dictionary.save_model(path)
        dead = None
    else:
        from sae_flux.sources import TensorSource
        from sae_flux.train import DataConfig, DictionaryConfig, OptimConfig, TrainConfig, train_sae

        p = setting.params
        train_cfg = TrainConfig(
            out=str(path), data=DataConfig(hook=cfg.hook, model=cfg.model),
            sae=DictionaryConfig(architecture=setting.kind, k=p["k"], d_sae=p["d_sae"], normalize=p["normalize"],
                                 normalize_tokens=min(len(acts_ND), FIT_TOKENS)),
            optim=OptimConfig(total_tokens=cfg.sae_epochs * len(acts_ND), batch_size=min(cfg.sae_batch, len(acts_ND)),
                              lr=cfg.sae_lr, seed=seed, max_epochs=cfg.sae_epochs),
            eval_tokens=min(len(acts_ND), FIT_TOKENS), log_every=100,
        )
        result = train_sae(train_cfg, source=TensorSource(acts_ND))
        dictionary, dead = result.sae, result.metrics.dead_fraction
    source = dictionary_source(path, setting.name)
    return source, dictionary, dead


def neuron_setting(setting: Setting, seed: int, hook: str, width: int) -> FeatureSource:
    """The neurons of ``hook`` read as a setting asks: all, the top k per token, or a random subset (seeded)."""
    if setting.kind == "neurons":
        return neuron_source(hook, width, name=setting.name)
    if setting.kind == "neurons-topk":
        k = setting.params["k"]

        def top(x: Tensor) -> Tensor:
            kept = x.float().topk(k, dim=1)
            return torch.zeros_like(x.float()).scatter_(1, kept.indices, kept.values.relu())

        return FeatureSource(setting.name, hook, width, width, "neurons", encode=top)
    size = setting.params["size"]
    pick = torch.randperm(width, generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return FeatureSource(setting.name, hook, width, size, "neurons", encode=lambda x: x.float()[:, pick])


def dense_read(dictionary: Any, name: str, hook: str) -> FeatureSource:
    """A dictionary's encoder directions read densely: ``x @ W_enc`` (before any TopK, threshold or pursuit).

    Per unit this ranks tokens as the pre-activation does (a bias or centring adds a constant per
    unit), so it separates what the directions know from what the sparse read-out keeps.
    """
    w_DF = dictionary.W_enc.detach().float()
    return FeatureSource(f"{name} dense read", hook, w_DF.shape[0], w_DF.shape[1],
                         "dictionary", encode=lambda x: x.float() @ w_DF)


def chosen_support(scores: UnitScores, source: FeatureSource, held: ScoringSet) -> tuple[float, float]:
    """(mean firing rate, mean concept recall of the support) of each factor concept's AP-chosen unit.

    A unit that is 0 on a share ``1 - r`` of a concept's tokens ties them with every negative at 0,
    so its AP is about ``r x precision + (1 - r) x prevalence`` at best: ``r`` is the cap.
    """
    from sae_flux.interp.calibrate import CONTEXT

    values_NF = torch.cat([source.encode(held.acts[source.hook][i:i + 4096])
                           for i in range(0, len(held.image_N), 4096)])
    factor = [i for i, c in enumerate(held.concepts) if c not in CONTEXT]
    rates, recalls = [], []
    for i in factor:
        on_N = values_NF[:, scores.chosen["ap"][i]] != 0
        rates.append(float(on_N.float().mean()))
        recalls.append(float(on_N[held.masks_NC[:, i]].float().mean()))
    return _mean(rates), _mean(recalls)


class Floors:
    """The floors of every run, each computed once per (kind, width, seed) where it does not depend on the run."""

    def __init__(self, sets: Sets, score_cfg: ScoreConfig) -> None:
        self.sets, self.cfg = sets, score_cfg
        self.dense: dict[tuple[str, int, int], UnitScores] = {}
        self.units: dict[str, UnitScores] = {}
        """Scores of the units of settings that do not depend on the seed (all neurons, top-k neurons)."""

    def score(self, source: FeatureSource) -> UnitScores:
        return score_units(source, self.sets.held, self.cfg, select=self.sets.select)

    def of(self, run: Run, source: FeatureSource) -> dict[str, UnitScores]:
        hook, seed = source.hook, run.seed
        fit_ND = self.sets.train.acts[hook][:FIT_TOKENS]
        key = (hook, source.width, seed)
        if key not in self.dense:
            self.dense[key] = self.score(random_source(hook, fit_ND.shape[1], source.width, seed))
        rates_F, _ = _firing(source, fit_ND)
        found = {"dense": self.dense[key], "sparse": self.score(rate_matched_source(hook, fit_ND, rates_F, seed))}
        if run.setting.kind == "topk":
            found["topk"] = self.score(topk_random_source(hook, fit_ND.mean(0), source.width,
                                                          run.setting.params["k"], seed))
        return found


def measure(setting: Setting, seed: int, cfg: SweepConfig, sets: Sets, out: Path, floors: Floors, mlp: str) -> Run:
    """Train one setting at one seed, measure it on held-out images and score it with its floors."""
    if setting.family == "neurons":
        width = sets.train.acts[mlp].shape[1]
        source = neuron_setting(setting, seed, mlp, width)
        rates_F, l0 = _firing(source, sets.held.acts[mlp])
        run = Run(setting, seed, "", source.width, int((rates_F > 0).sum()), l0, None,
                  float((rates_F == 0).float().mean()), None)
        dictionary = None
    else:
        source, dictionary, train_dead = train_setting(setting, seed, cfg, sets, out)
        fvu, l0, rates_F = _held_metrics(dictionary, sets.held.acts[cfg.hook])
        run = Run(setting, seed, source.path, source.width, int((rates_F > 0).sum()), l0, fvu,
                  float((rates_F == 0).float().mean()), train_dead)
    deterministic = setting.kind in ("neurons", "neurons-topk")  # the same units at every seed: scored once
    if not deterministic or setting.name not in floors.units:
        floors.units[setting.name] = floors.score(source)
    run.scores = {"units": floors.units[setting.name], **floors.of(run, source)}
    if setting.family != "neurons":
        run.scores["dense read"] = floors.score(dense_read(dictionary, setting.name, source.hook))
    run.chosen_rate, run.chosen_recall = chosen_support(run.scores["units"], source, sets.held)
    logger.info("%s seed %d: %d/%d live, L0 %.1f, FVU %s, AP %.3f (dense floor %.3f, sparse floor %.3f)",
                setting.name, seed, run.live, run.width, run.l0, "-" if run.fvu is None else f"{run.fvu:.3f}",
                run.scores["units"].summary["ap_best"], run.scores["dense"].summary["ap_best"],
                run.scores["sparse"].summary["ap_best"])
    return run


# -- pooling over seeds ----------------------------------------------------------------------------


class Pooled(NamedTuple):
    """A summary pooled over seeds: the mean, a two-level bootstrap interval and the resampled values."""

    value: float
    low: float
    high: float
    samples: Tensor

    def text(self, digits: int = 3) -> str:
        if math.isnan(self.low):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def pool(per_seed: Sequence[Tensor], seed: int = 0) -> Pooled:
    """Mean over seeds of row 0 (the full image set), with a two-level percentile bootstrap.

    ``per_seed[s]`` holds one summary under every image weighting (row 0 the full set, then the
    resamples, the same weightings for every unit set). Resample ``b`` draws seeds with
    replacement (the same draw for every setting with as many seeds, from ``seed``) and averages
    their values under weighting ``b``: the interval covers seed and image variation, and the
    difference of two pooled samples is paired on images.
    """
    stack_SB = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in per_seed])
    n_seeds, n_rows = stack_SB.shape
    value = float(stack_SB[:, 0].nanmean())
    if n_rows < 2:
        return Pooled(value, math.nan, math.nan, torch.empty(0))
    picks_BS = torch.randint(0, n_seeds, (n_rows - 1, n_seeds), generator=torch.Generator().manual_seed(seed))
    samples_B = stack_SB[picks_BS, torch.arange(1, n_rows)[:, None]].nanmean(1)
    return Pooled(value, *percentiles(samples_B), samples_B)


def difference(a: Pooled, b: Pooled) -> Pooled:
    """``a - b`` with the interval of the paired resampled differences."""
    if not len(a.samples) or len(a.samples) != len(b.samples):
        return Pooled(a.value - b.value, math.nan, math.nan, torch.empty(0))
    diff_B = a.samples - b.samples
    return Pooled(a.value - b.value, *percentiles(diff_B), diff_B)


class Point(NamedTuple):
    """One setting pooled over its seeds: the axes and the scores (units and floors)."""

    family: str
    name: str
    seeds: int
    live: float
    l0: float
    fvu: float | None
    dead: float
    train_dead: float | None
    """Mean dead fraction the training runs measured in their own window (SAEs; None otherwise)."""
    chosen_rate: float
    chosen_recall: float
    scores: dict[str, dict[str, Pooled]]
    """role (units, dense, sparse, topk) -> summary -> pooled."""

    def axis(self, name: str) -> float | None:
        return {"live": self.live, "l0": self.l0, "fvu": self.fvu}[name]


def points(runs: Sequence[Run]) -> list[Point]:
    """Every setting of ``runs`` pooled over its seeds (in the order the settings first appear)."""
    out = []
    for name in dict.fromkeys(r.setting.name for r in runs):
        group = [r for r in runs if r.setting.name == name]
        roles = [role for role in group[0].scores if all(role in r.scores for r in group)]
        scores = {role: {key: pool([r.scores[role].samples[key] for r in group]) for key in POOLED} for role in roles}
        fvus = [r.fvu for r in group if r.fvu is not None]
        out.append(Point(group[0].setting.family, name, len(group), _mean([r.live for r in group]),
                         _mean([r.l0 for r in group]), _mean(fvus) if fvus else None,
                         _mean([r.dead_fraction for r in group]),
                         _mean(train_dead) if (train_dead := [r.train_dead_fraction for r in group
                                                              if r.train_dead_fraction is not None]) else None,
                         _mean([r.chosen_rate for r in group]),
                         _mean([r.chosen_recall for r in group]), scores))
    return out


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


# -- matched comparisons and frontiers -------------------------------------------------------------


class Pair(NamedTuple):
    """Two settings of different families matched on one axis."""

    axis: str
    a: Point
    b: Point
    ratio: float
    """``a``'s value over ``b``'s on the axis."""
    diff: Pooled
    """AP of ``a`` minus AP of ``b`` (factor concepts, chosen units), paired on images."""

    def verdict(self) -> str:
        if math.isnan(self.diff.low):
            return "cannot tell"
        return f"{self.a.family} higher" if self.diff.low > 0 else f"{self.b.family} higher" if self.diff.high < 0 \
            else "cannot tell"


def matched_pairs(found: Sequence[Point], axis: str, tolerance: float, score: str = "ap_best") -> list[Pair]:
    """For each setting, the nearest setting of every later family on ``axis``, kept when within ``tolerance``.

    Families are taken in the order sae, itda, neurons; a pair is kept when the larger axis value
    is at most ``1 + tolerance`` times the smaller one.
    """
    families = [f for f in ("sae", "itda", "neurons") if any(p.family == f for p in found)]
    pairs = []
    for i, fa in enumerate(families):
        for fb in families[i + 1:]:
            for a in (p for p in found if p.family == fa and _positive(p.axis(axis))):
                others = [b for b in found if b.family == fb and _positive(b.axis(axis))]
                if not others:
                    continue
                b = min(others, key=lambda o: abs(math.log(a.axis(axis) / o.axis(axis))))  # type: ignore[operator]
                ratio = a.axis(axis) / b.axis(axis)  # type: ignore[operator]
                if max(ratio, 1 / ratio) <= 1 + tolerance:
                    pairs.append(Pair(axis, a, b, ratio, difference(a.scores["units"][score], b.scores["units"][score])))
    return pairs


def _positive(value: float | None) -> bool:
    return value is not None and value > 0


def frontier(found: Sequence[Point], axis: str, score: str = "ap_best") -> list[Point]:
    """Settings of ``found`` not beaten by another on ``axis`` and ``score`` at once.

    On ``live`` and ``l0`` a smaller value is cheaper; on ``fvu`` a smaller value is better: a
    point is dominated when another has an axis value no larger and a score no smaller (one of
    them strictly).
    """
    usable = [p for p in found if p.axis(axis) is not None]

    def dominated(p: Point) -> bool:
        x, y = p.axis(axis), p.scores["units"][score].value
        return any(q is not p and q.axis(axis) <= x and q.scores["units"][score].value >= y  # type: ignore[operator]
                   and (q.axis(axis) < x or q.scores["units"][score].value > y) for q in usable)  # type: ignore[operator]

    return sorted((p for p in usable if not dominated(p)), key=lambda p: p.axis(axis))  # type: ignore[arg-type,return-value]


# -- the whole sweep -------------------------------------------------------------------------------


class SweepResult(NamedTuple):
    runs: list[Run]
    points: list[Point]
    ceilings: dict[str, UnitScores]
    pairs: list[Pair]
    json_path: Path
    markdown_path: Path


def run_sweep(cfg: SweepConfig, command: str = "", flux: Any = None) -> SweepResult:
    """Train, measure and score every setting of ``cfg`` at every seed; write sweep.json and sweep.md."""
    from sae_flux.cache import load_flux
    from sae_flux.threads import torch_threads

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise FileExistsError(f"sweep output directory {out} is not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    flux = flux or load_flux(cfg.model)
    kind, block, stream = (cfg.hook.split(".") + ["", "", ""])[:3]
    mlp = f"double.{block}.mlp" if kind == "double" and stream == "img" else ""
    settings = parse_settings(cfg, flux.width(mlp) if mlp else None)
    hooks = [cfg.hook, *([mlp] if mlp else [])]
    with torch_threads(cfg.threads):
        return _sweep(cfg, command, flux, out, settings, hooks, mlp, time.perf_counter())


def _sweep(cfg: SweepConfig, command: str, flux: Any, out: Path, settings: list[Setting], hooks: list[str],
           mlp: str, start: float) -> SweepResult:
    sets = Sets(capture_set(flux, hooks, cfg.train_images, seed=TRAIN_SEED, step=cfg.step),
                capture_set(flux, hooks, cfg.images, seed=HELD_SEED, step=cfg.step),
                capture_set(flux, hooks, cfg.select_images, seed=SELECT_SEED, step=cfg.step))
    score_cfg = ScoreConfig(bootstrap=cfg.bootstrap)
    floors = Floors(sets, score_cfg)
    runs = [measure(s, seed, cfg, sets, out, floors, mlp) for s in settings for seed in cfg.seeds]
    ceilings = {hook: score_units(probe_source(sets.select, hook), sets.held, score_cfg, select=sets.select)
                for hook in hooks}
    found = points(runs)
    pairs = [pair for axis in AXES for pair in matched_pairs(found, axis, cfg.tolerance)]
    record = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "seconds": round(time.perf_counter() - start), "config": asdict(cfg), "seeds": {"train": TRAIN_SEED, "held_out": HELD_SEED,
                                                                  "select": SELECT_SEED},
              "runs": [r.record() for r in runs], "settings": [_point_record(p) for p in found],
              "ceilings": {hook: {k: round(v, 4) for k, v in s.summary.items()} for hook, s in ceilings.items()},
              "pairs": [_pair_record(p) for p in pairs],
              "frontiers": {axis: {fam: [p.name for p in frontier([q for q in found if q.family == fam], axis)]
                                   for fam in ("sae", "itda", "neurons")} for axis in AXES}}
    json_path = out / "sweep.json"
    json_path.write_text(json.dumps(record, indent=1))
    md_path = out / "sweep.md"
    md_path.write_text(report(found, ceilings, pairs, f"{command}  # {record['date']}, {record['seconds']} s"),
                       encoding="utf-8")
    logger.info("sweep tables in %s", md_path.resolve())
    return SweepResult(runs, found, ceilings, pairs, json_path, md_path)


def _point_record(p: Point) -> dict[str, Any]:
    return {"setting": p.name, "family": p.family, "seeds": p.seeds, "live": p.live, "l0": p.l0, "fvu": p.fvu,
            "dead_fraction": p.dead, "train_dead_fraction": p.train_dead, "chosen_rate": p.chosen_rate, "chosen_recall": p.chosen_recall,
            "scores": {role: {k: [round(v.value, 4), round(v.low, 4), round(v.high, 4)] for k, v in keys.items()}
                       for role, keys in p.scores.items()},
            "differences": {f"{key} {label}": _rounded(diff) for key, label, diff in floor_differences(p)}}


#: Summaries compared with the floors, each a different scorer (threshold-free, area-matched, top-quantile).
COMPARED = (("ap_best", "AP"), ("iou_best", "IoU"), ("auroc_best", "AUROC"), ("bau_best", "Bau"))


def floor_differences(p: Point) -> list[tuple[str, str, Pooled]]:
    """(summary, 'minus ROLE', units minus that floor) for every compared summary and floor the point has."""
    return [(key, f"minus {role}", difference(p.scores["units"][key], p.scores[role][key]))
            for key, _ in COMPARED for role in ("dense", "sparse", "topk", "dense read") if role in p.scores]


def _pair_record(p: Pair) -> dict[str, Any]:
    return {"axis": p.axis, "a": p.a.name, "b": p.b.name, "a_value": p.a.axis(p.axis), "b_value": p.b.axis(p.axis),
            "ratio": round(p.ratio, 4), "ap_a": _rounded(p.a.scores["units"]["ap_best"]),
            "ap_b": _rounded(p.b.scores["units"]["ap_best"]), "ap_diff": _rounded(p.diff), "verdict": p.verdict()}


def _rounded(p: Pooled) -> list[float]:
    return [round(p.value, 4), round(p.low, 4), round(p.high, 4)]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(found: Sequence[Point], ceilings: dict[str, UnitScores], pairs: Sequence[Pair], command: str) -> str:
    """The markdown of the sweep: every setting with its floors, the ceilings, matched pairs, frontiers, normalisations."""
    rows = []
    for p in found:
        s = p.scores
        rows.append({
            "setting": p.name, "family": p.family, "seeds": p.seeds, "live": f"{p.live:.0f}", "L0": f"{p.l0:.1f}",
            "held-out FVU": _fmt(p.fvu), "dead (held-out / training window)": f"{p.dead:.2f} / {_fmt(p.train_dead, 2)}", "AP": s["units"]["ap_best"].text(),
            "dense floor": s["dense"]["ap_best"].text(), "sparse floor": s["sparse"]["ap_best"].text(),
            "TopK floor": s["topk"]["ap_best"].text() if "topk" in s else "-",
            "AP - sparse floor": difference(s["units"]["ap_best"], s["sparse"]["ap_best"]).text(),
            "area-matched IoU": s["units"]["iou_best"].text(), "IoU sparse floor": s["sparse"]["iou_best"].text(),
            "AUROC": s["units"]["auroc_best"].text(),
            "dense read AP": s["dense read"]["ap_best"].text() if "dense read" in s else "-",
            "chosen unit: firing / concept recall": f"{p.chosen_rate:.3f} / {p.chosen_recall:.2f}",
        })
    ceiling_rows = [{"hook": hook, "probe AP": ceiling.row()["ap_best"], "area-matched IoU": ceiling.row()["iou_best"],
                     "AUROC": ceiling.row()["auroc_best"]} for hook, ceiling in ceilings.items()]
    agreement = [{"setting": p.name, **{f"{label} - {role} floor": difference(
        p.scores["units"][key], p.scores[role][key]).text() for key, label in COMPARED for role in ("dense", "sparse")}}
        for p in found]
    pair_rows = [{"axis": p.axis, "a": p.a.name, "b": p.b.name, "a value": _fmt(p.a.axis(p.axis), 2),
                  "b value": _fmt(p.b.axis(p.axis), 2), "AP a": p.a.scores["units"]["ap_best"].text(),
                  "AP b": p.b.scores["units"]["ap_best"].text(), "AP a - b": p.diff.text(), "verdict": p.verdict()}
                 for p in pairs]
    frontier_rows = [{"axis": axis, "family": fam, "frontier (axis value: AP)": ", ".join(
        f"{q.name} ({_fmt(q.axis(axis), 2)}: {q.scores['units']['ap_best'].value:.3f})"
        for q in frontier([x for x in found if x.family == fam], axis))}
        for axis in AXES for fam in ("sae", "itda", "neurons") if any(x.family == fam for x in found)]
    parts = [f"# Sweep\n\n`{command}`\n\nAP, IoU and AUROC: mean over the factor concepts of the unit chosen per concept "
             "on the selection images, scored on held-out images; mean over seeds [2.5-97.5% two-level bootstrap over "
             "seeds and images].\n", markdown(rows), "\n## Probe ceilings\n\n", markdown(ceiling_rows),
             "\n## Units minus floors under four scorers\n\n", markdown(agreement)]
    parts += ["\n## Matched comparisons\n\n", markdown(pair_rows) if pair_rows else "No matched pairs.\n"]
    parts += ["\n## Frontiers\n\n", markdown(frontier_rows) if frontier_rows else "None.\n"]
    return "".join(parts)

