"""Training a steering vector: contrastive activation addition (CAA, Rimsky et al. 2024).

For every pair (prompt, positive, negative) the residual stream ``resid_L`` (output of
decoder block ``L``) is read at the positions a read rule picks in each completion
(``cae.read``), and an aggregator (``cae.aggregators``) turns the per-pair activations
into one direction per layer; CAA's vector is the mean of positive minus negative at the
answer-letter token. Activations are read through an ``nnsight`` trace, so the same code
runs on local and remote (NDIF) models.

Batches are padded on the tokenizer's side (left or right); position ids are taken from
the attention mask, so a padded row sees exactly the positions it would see alone and the
vector equals the unbatched one. Legend: B rows, T tokens, D width, N pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import nnsight
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm

from cae.aggregators import aggregator as get_aggregator
from cae.model import (
    check_layers,
    hf_module,
    input_device,
    is_hooked_transformer,
    site_path,
    submodule,
)
from cae.names import SITES
from cae.pairs import Pair, check_pairs
from cae.read import ReadRule, read_rule

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """How a steering vector is trained (also the CLI's ``cae train`` options)."""

    layers: list[int]
    """Decoder-block indices to read (``resid_L`` = output of block L)."""
    read: str = "answer"
    """Read rule: ``answer`` (CAA answer letter), ``last`` or ``mean`` (see ``cae.read``)."""
    aggregator: str = "mean"
    """``mean`` (difference of means, CAA), ``pca`` or ``logistic``."""
    batch_size: int = 16
    """Pairs per forward pass (each pair is two rows)."""
    padding_side: str | None = None
    """``left`` or ``right``; None keeps the tokenizer's."""
    site: str = "block"
    """Output of block L to read: ``block`` (residual stream), ``attn`` or ``mlp``."""

    def __post_init__(self) -> None:
        read_rule(self.read)
        if self.site not in SITES:
            raise ValueError(f"unknown site {self.site!r}; choose from {list(SITES)}")
        get_aggregator(self.aggregator)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")


class Encoded(NamedTuple):
    """A padded batch with the read weights of every row."""

    input_ids_BT: Int[Tensor, "B T"]
    attention_mask_BT: Int[Tensor, "B T"]
    position_ids_BT: Int[Tensor, "B T"]
    read_BT: Float[Tensor, "B T"]
    """Row-normalised weights of the read positions (rows sum to 1)."""


def completion_tokens(tokenizer: Any, prompt: str, text: str) -> tuple[list[int], int]:
    """Token ids of ``text`` (prompt + completion) and the index where the completion starts."""
    enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    ids, offsets, special = enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"]
    cut = len(prompt.rstrip())
    for i, ((start, end), sp) in enumerate(zip(offsets, special, strict=True)):
        if not sp and end > start and start >= cut:
            return ids, i
    return ids, len(ids)


def _row_reads(tokenizer: Any, pairs: Sequence[Pair], rule: ReadRule, offset: int):
    """Per pair: the two token lists and the absolute read indices of each."""
    rows = []
    for i, pair in enumerate(pairs):
        sides = []
        for completion in (pair.positive, pair.negative):
            ids, start = completion_tokens(tokenizer, pair.prompt, pair.prompt + completion)
            comp = tokenizer.convert_ids_to_tokens(ids[start:])
            if not comp:
                raise ValueError(
                    f"pair {offset + i}: completion {completion!r} adds no tokens to the prompt"
                )
            sides.append((ids, [start + j for j in rule.select(comp)], len(comp)))
        (_, pos_at, pos_n), (_, neg_at, neg_n) = sides
        if rule.aligned and (pos_n != neg_n or pos_at[0] - len(sides[0][0]) != neg_at[0] - len(sides[1][0])):
            raise ValueError(
                f"pair {offset + i}: positive {pair.positive!r} is {pos_n} tokens and negative "
                f"{pair.negative!r} is {neg_n} tokens, but read={rule.name!r} compares them at "
                "the same position; fix the pair or use read='mean' or read='last'"
            )
        rows.extend(sides)
    return rows


class AnswerPosition(NamedTuple):
    """Where a pair is read: token indices into ``prompt + positive`` / ``prompt + negative``
    (the first index when a rule averages several), and the tokens there."""

    positive: int
    negative: int
    positive_token: str
    negative_token: str


def answer_positions(tokenizer: Any, pairs: Sequence[Pair], read: str = "answer"
                     ) -> list[AnswerPosition]:
    """Per pair, the token each completion is read at under ``read`` (what training reads;
    for ``answer``, CAA's answer letter). Refuses pairs the rule cannot align, as training does.

    Example:
        >>> from cae.organism.train import build_tokenizer
        >>> answer_positions(build_tokenizer(), [Pair("q : hi", " ( A )", " ( B )")])
        [AnswerPosition(positive=5, negative=5, positive_token='A', negative_token='B')]
    """
    rows = _row_reads(tokenizer, check_pairs(pairs), read_rule(read), 0)
    out = []
    for (pos_ids, pos_at, _), (neg_ids, neg_at, _) in zip(rows[0::2], rows[1::2], strict=True):
        tokens = tokenizer.convert_ids_to_tokens([pos_ids[pos_at[0]], neg_ids[neg_at[0]]])
        out.append(AnswerPosition(pos_at[0], neg_at[0], *tokens))
    return out


def encode(tokenizer: Any, rows: list[tuple[list[int], list[int], int]], side: str) -> Encoded:
    """Pad token lists on ``side`` and build read weights for the given indices (on the CPU;
    ``read_activations`` moves them to the model)."""
    width = max(len(ids) for ids, _, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids_BT = torch.full((len(rows), width), pad, dtype=torch.long, device="cpu")
    mask_BT = torch.zeros((len(rows), width), dtype=torch.long, device="cpu")
    read_BT = torch.zeros((len(rows), width), device="cpu")
    for b, (ids, at, _) in enumerate(rows):
        shift = width - len(ids) if side == "left" else 0
        ids_BT[b, shift:shift + len(ids)] = torch.tensor(ids, dtype=torch.long, device="cpu")
        mask_BT[b, shift:shift + len(ids)] = 1
        read_BT[b, [shift + a for a in at]] = 1.0 / len(at)
    position_ids_BT = (mask_BT.cumsum(-1) - 1).clamp_min(0)
    return Encoded(ids_BT, mask_BT, position_ids_BT, read_BT)


def read_hooked(
    model: Any, batch: Encoded, layers: list[int], site: str = "block"
) -> list[Float[Tensor, "B D"]]:
    """``read_activations`` on a TransformerLens ``HookedTransformer``: its hook points
    (``blocks.{L}.hook_resid_post`` for ``block``) through ``run_with_cache``. The batch must
    be right-padded (real tokens keep their positions; causal attention never sees the pad)."""
    names = [site_path(model, layer, site) for layer in layers]
    device = input_device(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.input_ids_BT.to(device), names_filter=names)
    read_BT = batch.read_BT.to(device)
    return [torch.einsum("bt,btd->bd", read_BT, cache[name].float()) for name in names]


def read_activations(
    model: Any, batch: Encoded, layers: list[int], site: str = "block"
) -> list[Float[Tensor, "B D"]]:
    """Read-weighted ``site`` output (default the residual stream) of every row at each
    layer, through an nnsight trace (or a ``HookedTransformer``'s hook points)."""
    if is_hooked_transformer(model):
        return read_hooked(model, batch, layers, site)
    envoys = [submodule(model, site_path(model, layer, site)) for layer in layers]
    device = input_device(model)
    inputs = {"input_ids": batch.input_ids_BT.to(device),
              "attention_mask": batch.attention_mask_BT.to(device),
              "position_ids": batch.position_ids_BT.to(device)}
    read_BT = batch.read_BT
    reads: list[Tensor] = []
    with torch.no_grad(), model.trace(inputs):
        for envoy in envoys:
            out = envoy.output
            hidden_BTD = out[0] if isinstance(out, tuple) else out
            acts_BD = torch.einsum("bt,btd->bd", read_BT.to(hidden_BTD.device),
                                   hidden_BTD.float())  # float32 sums, any model dtype
            reads.append(nnsight.save(acts_BD))
    return reads


class Activations(NamedTuple):
    """Per-layer activations of the positive and negative completions."""

    pos: dict[int, Float[Tensor, "N D"]]
    neg: dict[int, Float[Tensor, "N D"]]


def collect(model: Any, pairs: Sequence[Pair], cfg: TrainConfig) -> Activations:
    """Read every pair at ``cfg.layers`` in batches (the expensive half of training)."""
    pairs = check_pairs(pairs)
    layers = check_layers(model, cfg.layers)
    tokenizer = model.tokenizer
    side = cfg.padding_side or tokenizer.padding_side or "right"
    if is_hooked_transformer(model):
        side = "right"  # positions from 0 in every row without an attention mask
    pos: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    neg: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    starts = range(0, len(pairs), cfg.batch_size)
    for start in tqdm(starts, desc="reading pairs", disable=len(starts) < 4):
        chunk = pairs[start:start + cfg.batch_size]
        rows = _row_reads(tokenizer, chunk, read_rule(cfg.read), start)
        reads = read_activations(model, encode(tokenizer, rows, side), layers, cfg.site)
        for layer, acts_BD in zip(layers, reads, strict=True):
            pos[layer].append(acts_BD[0::2])
            neg[layer].append(acts_BD[1::2])
    return Activations({k: torch.cat(v) for k, v in pos.items()},
                       {k: torch.cat(v) for k, v in neg.items()})


def training_activations(model: Any, pairs: Sequence[Pair], cfg: TrainConfig) -> Activations:
    """``collect`` on an nnsight ``TransformersModel`` (checked): what training aggregates."""
    if is_hooked_transformer(model):
        if getattr(model, "tokenizer", None) is None:
            raise TypeError("training a HookedTransformer needs its tokenizer (model.tokenizer)")
        return collect(model, pairs, cfg)
    if not hasattr(model, "trace"):
        raise TypeError("training needs an nnsight TransformersModel (cae.model.wrap) or a "
                        "TransformerLens HookedTransformer")
    hf_module(model)
    return collect(model, pairs, cfg)


def aggregate(acts: Activations, aggregator: str) -> dict[int, Tensor]:
    """Per-layer steering directions from the activations of both completions."""
    agg = get_aggregator(aggregator)
    vectors = {layer: agg(acts.pos[layer], acts.neg[layer]) for layer in acts.pos}
    for layer, vec_D in vectors.items():
        if not bool(vec_D.any()):
            warn_zero_vector(layer, acts, aggregator)
    return vectors


def warn_zero_vector(layer: int, acts: Activations, aggregator: str) -> None:
    """Say why the vector at ``layer`` is all zeros (steering with it changes nothing)."""
    same = torch.equal(acts.pos[layer], acts.neg[layer])
    cause = ("the two answers of every pair give identical activations there: the model cannot "
             "tell them apart (e.g. words its vocabulary maps to the same unknown token)"
             if same else f"the {aggregator!r} aggregator returned zeros for these activations")
    logger.warning("the steering vector at layer %d is all zeros, so steering with it does "
                   "nothing: %s", layer, cause)


def train_vectors(model: Any, pairs: Sequence[Pair], cfg: TrainConfig) -> dict[int, Tensor]:
    """Per-layer steering directions (float32) from contrastive pairs."""
    return aggregate(training_activations(model, pairs, cfg), cfg.aggregator)


def mean_norms(acts: Activations) -> dict[int, float]:
    """Mean L2 norm of the residual stream at each layer over the read positions of both
    completions of every pair (the scale of ``SteeringVector.norm_matched``)."""
    return {layer: float(torch.cat([acts.pos[layer], acts.neg[layer]]).norm(dim=1).mean())
            for layer in acts.pos}
