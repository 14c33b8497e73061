"""Behaviour metrics of a steering vector on A/B items (CAA and Tan et al. 2024).

CAA (Rimsky et al. 2024) and the CAE paper (Hao et al. 2025, arXiv 2505.03189) score a
steered model on held-out A/B items by ``p(matching letter) / (p(A) + p(B))`` at the
answer position, averaged over items. Tan et al. 2024 ("Analyzing the generalization and
reliability of steering vectors") add per-item reliability: the *propensity* of an item is
the logit difference ``logit(matching) - logit(not matching)``; its least-squares slope
against the multiplier is the item's steerability; the dataset's steerability is the slope
of the mean propensity (equal to the mean of the item slopes); the *anti-steerable
fraction* is the share of items whose slope is negative.

An item is a ``cae.pairs.Pair``: the two completions are tokenized after the prompt, and
the first token where they differ is the answer token (``A`` of ``" ( A )"``); the model
is run on the shared prefix before it (``prompt + " ("``) and the two answer tokens'
logits at its last position are compared. Note ``p(m) / (p(A) + p(B)) = sigmoid(propensity)``.

Steering uses ``cae.apply.steering`` on the underlying ``transformers`` model with the
run's position rule: ``from_prompt_end`` (default) adds the vector at the last prefix token
(the position that predicts the answer), as CAA adds it from the end of the instruction on;
``all`` adds it at every prefix token. Scoring an answer token generates nothing, so
``generated`` would add nothing at all and is refused (``check_scoring_positions``).

Legend: I items, M multipliers, B rows, T tokens, V vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm

from cae.apply import check_multiplier, check_positions
from cae.model import hf_module, input_device
from cae.pairs import Pair, check_pairs
from cae.train import completion_tokens
from cae.vector import SteeringVector

logger = logging.getLogger(__name__)


def check_scoring_positions(positions: str) -> str:
    """A position rule that steers the forward scoring an answer token, or a ValueError.

    ``generated`` steers decoding steps only, and an A/B answer is scored in a prompt forward.
    """
    if check_positions(positions) == "generated":
        raise ValueError("positions='generated' adds nothing when an answer token is scored "
                         "(no token is generated before it); use 'all' or 'from_prompt_end'")
    return positions


class AnswerItem(NamedTuple):
    """An A/B item reduced to what scoring needs."""

    prefix_ids: list[int]
    """Tokens up to (not including) the answer token, shared by both completions."""
    matching_id: int
    """Answer token of the behaviour-matching completion."""
    not_matching_id: int
    """Answer token of the other completion."""


def answer_item(tokenizer: Any, pair: Pair, index: int = 0) -> AnswerItem:
    """Tokenize a pair and locate its answer token (first token where the texts differ)."""
    pos_ids, _ = completion_tokens(tokenizer, pair.prompt, pair.prompt + pair.positive)
    neg_ids, _ = completion_tokens(tokenizer, pair.prompt, pair.prompt + pair.negative)
    k = next((i for i, (a, b) in enumerate(zip(pos_ids, neg_ids, strict=False)) if a != b), None)
    if k is None or k == 0:
        raise ValueError(
            f"item {index}: completions {pair.positive!r} and {pair.negative!r} do not differ "
            "at a single answer token after a shared prefix; cannot score it as an A/B item"
        )
    return AnswerItem(pos_ids[:k], pos_ids[k], neg_ids[k])


def answer_items(tokenizer: Any, pairs: Sequence[Pair]) -> list[AnswerItem]:
    """``answer_item`` for every pair (checked)."""
    return [answer_item(tokenizer, p, i) for i, p in enumerate(check_pairs(pairs))]


def left_padded(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str
) -> tuple[Int[Tensor, "B T"], Int[Tensor, "B T"], Int[Tensor, "B T"]]:
    """Token rows left-padded on ``device``: (input ids, attention mask, position ids from
    the mask, so a padded row sees the positions it would see alone)."""
    width = max(len(ids) for ids in rows)
    ids_BT = torch.full((len(rows), width), pad_id, dtype=torch.long, device="cpu")
    mask_BT = torch.zeros((len(rows), width), dtype=torch.long, device="cpu")
    for b, ids in enumerate(rows):
        ids_BT[b, width - len(ids):] = torch.tensor(list(ids), dtype=torch.long, device="cpu")
        mask_BT[b, width - len(ids):] = 1
    pos_BT = (mask_BT.cumsum(-1) - 1).clamp_min(0)
    return ids_BT.to(device), mask_BT.to(device), pos_BT.to(device)


def last_logits_only(hf: Any) -> dict[str, int]:
    """``logits_to_keep=1`` where the model's forward takes it (no vocabulary projection of
    positions nobody reads)."""
    import inspect

    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(hf.forward).parameters else {}


def propensities(
    model: Any, tokenizer: Any, items: Sequence[AnswerItem], batch_size: int = 32
) -> Float[Tensor, " I"]:
    """Logit difference (matching - not matching) at the answer position of each item (on
    the CPU, whatever the model's device).

    Runs the model as is: wrap the call in ``sv.apply(...)`` to score a steered model.
    """
    hf = hf_module(model)
    device = input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[Tensor] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        ids_BT, mask_BT, pos_BT = left_padded([it.prefix_ids for it in chunk], pad, device)
        with torch.no_grad():
            logits_BV = hf(input_ids=ids_BT, attention_mask=mask_BT, position_ids=pos_BT,
                           **last_logits_only(hf)).logits[:, -1].float()
        at = logits_BV.device
        rows = torch.arange(len(chunk), device=at)
        match_B: Int[Tensor, " B"] = torch.tensor([it.matching_id for it in chunk], device=at)
        other_B: Int[Tensor, " B"] = torch.tensor([it.not_matching_id for it in chunk], device=at)
        out.append((logits_BV[rows, match_B] - logits_BV[rows, other_B]).cpu())
    return torch.cat(out)


def steered_propensities(
    model: Any, tokenizer: Any, items: Sequence[AnswerItem], sv: SteeringVector | None,
    multiplier: float, positions: str = "from_prompt_end", batch_size: int = 32,
) -> Float[Tensor, " I"]:
    """Propensities with ``multiplier * sv`` added at ``positions`` (``sv=None`` or multiplier
    0: unsteered)."""
    check_scoring_positions(positions)
    if sv is None or check_multiplier(multiplier) == 0.0:
        return propensities(model, tokenizer, items, batch_size)
    with sv.apply(model, multiplier, positions=positions, force=True):
        return propensities(model, tokenizer, items, batch_size)


def least_squares_slopes(
    multipliers_M: Float[Tensor, " M"], y_IM: Float[Tensor, "I M"]
) -> Float[Tensor, " I"]:
    """Slope of the least-squares line through (multiplier, y) for every row."""
    x_M = multipliers_M.double() - multipliers_M.double().mean()
    denom = (x_M * x_M).sum()
    if denom == 0:
        raise ValueError("steerability needs at least two distinct multipliers")
    return ((y_IM.double() - y_IM.double().mean(-1, keepdim=True)) @ x_M / denom).float()


@dataclass
class BehaviourConfig:
    """How the behaviour metrics are measured.

    Example:
        >>> BehaviourConfig([-2, 0, 2]).multipliers, BehaviourConfig([-1, 1]).positions
        ([-2.0, 0.0, 2.0], 'from_prompt_end')
    """

    multipliers: list[float]
    """Multipliers of the propensity curve (at least two distinct values)."""
    positions: str = "from_prompt_end"
    """Where the vector is added (``cae.apply.POSITIONS`` except ``generated``)."""
    batch_size: int = 32
    """Items per forward pass."""

    def __post_init__(self) -> None:
        self.multipliers = [check_multiplier(m) for m in self.multipliers]
        if len(set(self.multipliers)) < 2:
            raise ValueError(f"need at least two distinct multipliers, got {self.multipliers}")
        check_scoring_positions(self.positions)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class BehaviourResult:
    """Behaviour metrics of one vector on one item set."""

    multipliers: list[float]
    """Multipliers, in the order of the columns below."""
    propensity: list[list[float]]
    """Per item, per multiplier: logit(matching) - logit(not matching)."""
    p_matching: list[list[float]]
    """Per item, per multiplier: p(matching) / (p(A) + p(B))."""
    mean_p_matching: list[float]
    """Per multiplier: mean over items of ``p_matching`` (CAA's metric)."""
    slopes: list[float]
    """Per item: least-squares slope of propensity vs multiplier."""
    steerability: float
    """Slope of the mean propensity vs multiplier (= mean of ``slopes``)."""
    anti_steerable_fraction: float
    """Share of items with a negative slope."""


def behaviour(
    model: Any, pairs: Sequence[Pair], sv: SteeringVector | None, cfg: BehaviourConfig,
    unsteered: Tensor | None = None,
) -> BehaviourResult:
    """Propensity, p(matching) and steerability of ``sv`` over ``cfg.multipliers``
    (``unsteered``: the items' unsteered propensities, if already known, for multiplier 0).

    Example:
        >>> from cae.model import load_language_model
        >>> from cae.organism.corpus import items
        >>> lm = load_language_model("organism:tiny")
        >>> train = [i.pair() for i in items("kind", "ab", 32, "train")]
        >>> sv = SteeringVector.train(lm, train, [1])
        >>> res = behaviour(lm, [i.pair() for i in items("kind", "ab", 16)], sv,
        ...                 BehaviourConfig([-4.0, 0.0, 4.0]))
        >>> len(res.slopes)
        16
    """
    tokenizer = model.tokenizer
    items = answer_items(tokenizer, pairs)
    columns = [unsteered if m == 0.0 and unsteered is not None else
               steered_propensities(model, tokenizer, items, sv, m, cfg.positions, cfg.batch_size)
               for m in tqdm(cfg.multipliers, desc="multipliers", disable=len(cfg.multipliers) < 4)]
    prop_IM = torch.stack(columns, dim=1)
    p_IM = torch.sigmoid(prop_IM)
    slopes_I = least_squares_slopes(torch.tensor(cfg.multipliers, device=prop_IM.device), prop_IM)
    return BehaviourResult(
        multipliers=list(cfg.multipliers),
        propensity=prop_IM.tolist(),
        p_matching=p_IM.tolist(),
        mean_p_matching=p_IM.mean(0).tolist(),
        slopes=slopes_I.tolist(),
        steerability=float(slopes_I.double().mean()),
        anti_steerable_fraction=float((slopes_I < 0).float().mean()),
    )


def single_layer(sv: SteeringVector, layer: int) -> SteeringVector:
    """The part of ``sv`` at one layer (a new vector)."""
    if layer not in sv.vectors:
        raise ValueError(f"vector has no layer {layer}; it has {list(sv.vectors)}")
    from dataclasses import replace

    return SteeringVector({layer: sv.vectors[layer]}, replace(sv.meta, layers=(layer,)))


@dataclass
class LayerSweep:
    """Behaviour per layer; the chosen layer steers most strongly, either way."""

    layers: list[int]
    """Layers evaluated, each applied alone."""
    results: list[BehaviourResult]
    """One result per layer."""
    best_layer: int
    """Layer with the largest |steerability| (ties: the earliest)."""
    ranking: list[int] = field(default_factory=list)
    """Layers by |steerability|, largest first."""
    anti_steerable_layers: list[int] = field(default_factory=list)
    """Layers whose steerability is negative: adding the vector lowers p(matching)."""
    reversed: bool = False
    """Whether the chosen layer is anti-steerable (its sign is the opposite of the vector's)."""
    warnings: list[str] = field(default_factory=list)
    """What a reader must know about the choice (a reversed sign)."""


def layer_sweep(
    model: Any, pairs: Sequence[Pair], sv: SteeringVector, cfg: BehaviourConfig
) -> LayerSweep:
    """Layer x multiplier sweep: each layer of ``sv`` applied alone; rank by |steerability|.

    A layer whose steerability is negative is anti-steerable: there the vector works in
    reverse. It is reported (``anti_steerable_layers``) and, when it is the chosen layer,
    warned about (``warnings`` and the log); it is not flipped.

    Example:
        >>> from cae import SteeringVector
        >>> from cae.model import load_language_model
        >>> from cae.organism.corpus import items
        >>> lm = load_language_model("organism:tiny")
        >>> pairs = [i.pair() for i in items("kind", "ab", 24, "train")]
        >>> sv = SteeringVector.train(lm, pairs[:16], [0, 1, 2])
        >>> sweep = layer_sweep(lm, pairs[16:], sv, BehaviourConfig([-4.0, 0.0, 4.0]))
        >>> sweep.layers, sweep.best_layer == sweep.ranking[0], len(sweep.results)
        ([0, 1, 2], True, 3)
    """
    layers = list(sv.vectors)
    base = (propensities(model, model.tokenizer, answer_items(model.tokenizer, pairs),
                         cfg.batch_size) if 0.0 in cfg.multipliers else None)
    results = [behaviour(model, pairs, single_layer(sv, layer), cfg, base)
               for layer in tqdm(layers, desc="layer sweep", disable=len(layers) < 2)]
    scores = [r.steerability for r in results]
    ranking = sorted(layers, key=lambda layer: (-abs(scores[layers.index(layer)]),
                                                layers.index(layer)))
    best = ranking[0]
    anti = [layer for layer, s in zip(layers, scores, strict=True) if s < 0]
    warnings = []
    if best in anti:
        warnings.append(f"the chosen layer {best} is anti-steerable: adding the vector lowers "
                        f"p(matching) (steerability {scores[layers.index(best)]:.3g}); "
                        "positive multipliers push away from the behaviour there")
        logger.warning(warnings[-1])
    logger.info("layer sweep steerability %s -> layer %d", dict(zip(layers, scores, strict=True)), best)
    return LayerSweep(layers, results, best, ranking, anti, best in anti, warnings)
