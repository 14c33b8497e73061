"""Sample efficiency: how a steering vector improves with the number of contrastive pairs.

The CAE paper (Hao et al. 2025, arXiv 2505.03189) finds that returns diminish at about 80
contrastive samples. Here vectors are built from n = 1, 2, 4, ... N pairs (``draws``
seeded random subsets per n, without replacement) by the vector's aggregator applied to
activations read once; for each we record the cosine to a reference vector and, when an
``effect`` function is given, the effect size of the subset vector.

Controls (``model_efficiency``): the training pairs are split in two disjoint halves, the
subsets are drawn from one and the reference vector is built from the other, so a large
subset does not agree with the reference merely by containing it (the cosine at the largest
n is the split-half ceiling, ``reference_cosine``). Subset vectors are rescaled to the length
of the evaluated full vector before their effect is measured (``length``), as the full
vector was normalised: a 1-pair mean difference is several times longer than the mean over
all pairs, so at its own length its effect mixes direction and length. Two curves are
reported: the cosine (direction only) and the length-matched effect; ``length_ratio`` keeps
each subset vector's own length over the full vector's, the confound the control removes.

Flattening criterion (stated): the first n from which the mean cosine stays at or above
``flat_fraction`` (default 0.95) of the asymptote, the mean cosine at the largest n; the
same rule on the mean effect size gives ``n_flat_effect``. "Stays" matters on noisy curves:
a lucky small subset (e.g. two pairs whose answer letters happen to cancel) does not count
when larger subsets fall below the line again.

Legend: N pairs, D width.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm import tqdm

from cae.aggregators import aggregator as get_aggregator

logger = logging.getLogger(__name__)

Effect = Callable[[Float[Tensor, " D"]], float]
"""A subset vector (one layer) -> its effect size (e.g. shift of mean propensity)."""


def doubling_sizes(n_max: int) -> list[int]:
    """1, 2, 4, ... up to ``n_max``, ending with ``n_max`` itself."""
    if n_max < 1:
        raise ValueError(f"need at least one pair, got n_max={n_max}")
    sizes, n = [], 1
    while n < n_max:
        sizes.append(n)
        n *= 2
    return sizes + [n_max]


@dataclass
class EfficiencyConfig:
    """How the sample-efficiency curve is measured.

    Example:
        >>> cfg = EfficiencyConfig(draws=2, seed=1)
        >>> cfg.sizes, cfg.aggregator, cfg.flat_fraction
        (None, 'mean', 0.95)
    """

    sizes: list[int] | None = None
    """Subset sizes n; None: 1, 2, 4, ... N (``doubling_sizes``)."""
    draws: int = 5
    """Random subsets per n (the full set is drawn once)."""
    seed: int = 0
    """Seed of the subset draws."""
    aggregator: str = "mean"
    """Aggregator building each subset's vector (``cae.aggregators``)."""
    flat_fraction: float = 0.95
    """Returns have flattened at the first n reaching this fraction of the asymptote."""

    def __post_init__(self) -> None:
        if self.draws < 1:
            raise ValueError(f"draws must be >= 1, got {self.draws}")
        if not 0.0 < self.flat_fraction <= 1.0:
            raise ValueError(f"flat_fraction must be in (0, 1], got {self.flat_fraction}")
        if self.sizes is not None and (not self.sizes or min(self.sizes) < 1):
            raise ValueError(f"sizes must be positive pair counts, got {self.sizes}")
        get_aggregator(self.aggregator)


@dataclass
class EfficiencyResult:
    """The sample-efficiency curve."""

    sizes: list[int]
    """Subset sizes n."""
    cosines: list[list[float]]
    """Per n, per draw: cosine of the subset vector to the reference vector (direction only)."""
    effects: list[list[float]]
    """Per n, per draw: effect size of the subset vector at ``length`` (length-matched; empty
    lists when no effect function was given)."""
    mean_cosine: list[float]
    """Per n: mean over draws."""
    mean_effect: list[float]
    """Per n: mean over draws (empty when no effect function was given)."""
    n_flat_cosine: int
    """First n whose mean cosine reaches ``flat_fraction`` of the mean cosine at the largest n."""
    n_flat_effect: int | None
    """The same rule on the mean effect (None without an effect function or with a
    non-positive asymptote)."""
    flat_fraction: float
    """The fraction used by the criterion."""
    length_ratio: list[list[float]] = field(default_factory=list)
    """Per n, per draw: the subset vector's own norm over ``length`` (or the reference's)."""
    length: float | None = None
    """Length every subset vector was rescaled to before its effect (None: its own)."""
    reference_cosine: float | None = None
    """Cosine of the whole pool's vector to the reference (the ceiling of the curve)."""
    n_pool: int = 0
    """Pairs the subsets are drawn from."""
    n_reference: int = 0
    """Pairs of the disjoint reference vector (0: the reference is the pool's own vector)."""


def first_flat(sizes: Sequence[int], curve: Sequence[float], fraction: float) -> int | None:
    """First size from which every value stays at or above ``fraction`` of the last value
    (None if the last value is <= 0)."""
    target = curve[-1]
    if target <= 0:
        return None
    flat = sizes[-1]
    for n, v in zip(reversed(sizes), reversed(curve), strict=True):
        if v < fraction * target:
            break
        flat = n
    return flat


def efficiency_curve(
    pos_ND: Float[Tensor, "N D"], neg_ND: Float[Tensor, "N D"], cfg: EfficiencyConfig,
    effect: Effect | None = None, reference_D: Float[Tensor, " D"] | None = None,
    length: float | None = None,
) -> EfficiencyResult:
    """Cosine to ``reference_D`` (default: the pool's own full vector) and effect of subset
    vectors vs subset size, from per-pair activations; with ``length`` every subset vector
    is rescaled to that norm before ``effect``.

    Example:
        >>> import torch
        >>> pos, neg = torch.randn(64, 8) + 1, torch.randn(64, 8)
        >>> res = efficiency_curve(pos, neg, EfficiencyConfig(draws=2))
        >>> res.sizes
        [1, 2, 4, 8, 16, 32, 64]
    """
    n_pairs = pos_ND.shape[0]
    sizes = sorted(set(cfg.sizes)) if cfg.sizes is not None else doubling_sizes(n_pairs)
    if sizes[-1] > n_pairs:
        raise ValueError(f"sample size n={sizes[-1]} is larger than the dataset "
                         f"({n_pairs} pairs); use sizes up to {n_pairs}")
    if length is not None and not length > 0:
        raise ValueError(f"length must be positive, got {length}")
    agg = get_aggregator(cfg.aggregator)
    ref_D = (agg(pos_ND, neg_ND) if reference_D is None else reference_D).float()
    ref_D = ref_D.to(pos_ND.device)
    scale = float(length) if length is not None else float(ref_D.norm())
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    cosines: list[list[float]] = []
    effects: list[list[float]] = []
    ratios: list[list[float]] = []
    for n in tqdm(sizes, desc="sample sizes", disable=len(sizes) < 4):
        cos_row, eff_row, ratio_row = [], [], []
        for _ in range(1 if n == n_pairs else cfg.draws):
            idx = torch.randperm(n_pairs, generator=gen, device="cpu")[:n].to(pos_ND.device)
            vec_D = agg(pos_ND[idx], neg_ND[idx]).float()
            cos_row.append(float(torch.nn.functional.cosine_similarity(vec_D, ref_D, dim=0)))
            ratio_row.append(float(vec_D.norm()) / scale if scale > 0 else float("nan"))
            if effect is not None:
                scaled_D = vec_D if length is None else vec_D / vec_D.norm().clamp_min(1e-12) * length
                eff_row.append(float(effect(scaled_D)))
        cosines.append(cos_row)
        effects.append(eff_row)
        ratios.append(ratio_row)
    mean_cos = [sum(r) / len(r) for r in cosines]
    mean_eff = [sum(r) / len(r) for r in effects] if effect is not None else []
    n_flat = first_flat(sizes, mean_cos, cfg.flat_fraction)
    pool_cos = float(torch.nn.functional.cosine_similarity(agg(pos_ND, neg_ND).float(), ref_D,
                                                           dim=0))
    return EfficiencyResult(
        sizes=sizes, cosines=cosines, effects=effects if effect is not None else [],
        mean_cosine=mean_cos, mean_effect=mean_eff,
        n_flat_cosine=n_flat if n_flat is not None else sizes[-1],
        n_flat_effect=first_flat(sizes, mean_eff, cfg.flat_fraction) if mean_eff else None,
        flat_fraction=cfg.flat_fraction, length_ratio=ratios, length=length,
        reference_cosine=pool_cos, n_pool=n_pairs,
    )


def propensity_shift(
    model: object, eval_pairs: Sequence[object], layer: int, multiplier: float,
    positions: str = "from_prompt_end",
) -> Effect:
    """Effect of a one-layer vector: mean propensity at ``+multiplier`` minus at ``-multiplier``
    on ``eval_pairs`` (a logit-difference shift; 0 means no effect)."""
    from cae.evaluate.behaviour import answer_items, steered_propensities
    from cae.model import hidden_size
    from cae.vector import SteeringVector, VectorMeta

    tokenizer = model.tokenizer  # type: ignore[attr-defined]
    items = answer_items(tokenizer, eval_pairs)  # type: ignore[arg-type]
    width = hidden_size(model)

    def effect(vec_D: Tensor) -> float:
        sv = SteeringVector({layer: vec_D}, VectorMeta("", width, (layer,)))
        up = steered_propensities(model, tokenizer, items, sv, multiplier, positions)
        down = steered_propensities(model, tokenizer, items, sv, -multiplier, positions)
        return float((up - down).mean())

    return effect


def halves(n_pairs: int, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded split of ``range(n_pairs)`` into two disjoint halves (pool, reference)."""
    if n_pairs < 2:
        raise ValueError(f"a disjoint reference needs at least 2 training pairs, got {n_pairs}")
    order = torch.randperm(n_pairs, generator=torch.Generator(device="cpu").manual_seed(seed),
                           device="cpu")
    half = n_pairs // 2
    return order[half:], order[:half]


def model_efficiency(
    model: object, train_pairs: Sequence[object], eval_pairs: Sequence[object], layer: int,
    cfg: EfficiencyConfig, multiplier: float = 1.0, positions: str = "from_prompt_end",
    read: str = "answer", length: float | None = None, disjoint: bool = True,
) -> EfficiencyResult:
    """Sample-efficiency curve of CAA vectors at ``layer``, effect measured on ``eval_pairs``
    with the vector added at ``positions``.

    ``disjoint``: subsets come from one half of ``train_pairs`` and the cosine is taken to the
    vector of the other half. ``length``: every subset vector is rescaled to this norm (the
    full vector's) before its effect at ``multiplier`` is measured.

    Example:
        >>> from cae.model import load_language_model
        >>> from cae.organism.corpus import items
        >>> lm = load_language_model("organism:tiny")
        >>> res = model_efficiency(lm, [i.pair() for i in items("kind", "ab", 16, "train")],
        ...                        [i.pair() for i in items("kind", "ab", 8)], 1,
        ...                        EfficiencyConfig(draws=2), multiplier=4.0, length=1.0)
        >>> res.sizes[-1], res.n_pool, res.n_reference
        (8, 8, 8)
    """
    from cae.train import TrainConfig, collect

    n_pool = len(train_pairs) - len(train_pairs) // 2 if disjoint else len(train_pairs)
    n_max = max(cfg.sizes) if cfg.sizes else n_pool
    if n_max > n_pool:  # before the expensive read
        raise ValueError(f"sample size n={n_max} is larger than the dataset ({n_pool} pairs"
                         f"{' in the subset half' if disjoint else ''}); use sizes up to "
                         f"{n_pool}")
    acts = collect(model, train_pairs, TrainConfig([layer], read, cfg.aggregator))  # type: ignore[arg-type]
    pos_ND, neg_ND = acts.pos[layer], acts.neg[layer]
    reference_D = None
    if disjoint:
        pool_P, ref_R = (ix.to(pos_ND.device) for ix in halves(len(pos_ND), cfg.seed))
        reference_D = get_aggregator(cfg.aggregator)(pos_ND[ref_R], neg_ND[ref_R])
        pos_ND, neg_ND = pos_ND[pool_P], neg_ND[pool_P]
    effect = propensity_shift(model, eval_pairs, layer, multiplier, positions)
    res = efficiency_curve(pos_ND, neg_ND, cfg, effect, reference_D, length)
    res.n_reference = len(train_pairs) - len(pos_ND) if disjoint else 0
    return res
