"""Adversarial inputs: prompt text that reverses the steered behaviour.

The CAE paper (Hao et al. 2025, arXiv 2505.03189) finds, with evolutionary prompt
optimisation, inputs on which a steered model still gives the opposite behaviour, and
notes they have high cross-entropy (they are not fluent). This is a greedy coordinate
search of the same kind: ``n_tokens`` inserted after the start of each A/B item's prompt
are, position by position, replaced by the candidate token that minimises

    sign(m) * propensity_steered(x') + fluency * CE_unsteered(x')

where ``propensity`` is ``logit(matching) - logit(not matching)`` at the answer position
(``cae.evaluate.behaviour``), steered with the run's position rule (``cfg.positions``:
the inserted tokens are steered too under ``all``), and ``CE`` the mean next-token
cross-entropy of the input under the unsteered model. An item is *reversed* when the steered
propensity has the opposite sign of ``m``: the steered model prefers the answer steering
pushes away from.

Candidates (GCG, Zou et al. 2023): the objective's gradient with respect to a one-hot
encoding of the inserted token ranks the vocabulary, and only the ``top_k`` best-ranked
tokens are scored exactly, so a step costs one gradient pass plus ``top_k`` forward rows
whatever the vocabulary size (about 1M rows per item over a 128k vocabulary without it).
``top_k=None`` scores the whole vocabulary (exact greedy, for small vocabularies). The
forward rows and backward passes each item used are reported, and ``budget`` caps them.

Legend: C candidates, T tokens, K inserted tokens, V vocabulary, D width.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm

from cae.apply import check_multiplier
from cae.evaluate.behaviour import AnswerItem, answer_items, check_scoring_positions
from cae.model import hf_module, input_device
from cae.pairs import Pair
from cae.vector import SteeringVector

logger = logging.getLogger(__name__)


@dataclass
class AdversarialConfig:
    """How the search runs."""

    multiplier: float
    """Steering multiplier whose behaviour the search tries to reverse (non-zero)."""
    n_tokens: int = 4
    """Tokens inserted after the prompt's first token (after ``<bos>`` when there is one)."""
    rounds: int = 2
    """Passes over the inserted positions (stops early once reversed)."""
    fluency: float = 0.0
    """Weight of the unsteered cross-entropy in the objective (higher: more fluent)."""
    seed: int = 0
    """Seed of the initial tokens."""
    batch_size: int = 128
    """Candidates per forward pass."""
    positions: str = "from_prompt_end"
    """Where the vector is added while scoring (the run's rule; ``cae.apply.POSITIONS``
    except ``generated``, which adds nothing to an answer-scoring forward)."""
    top_k: int | None = 32
    """Candidates per step, ranked by the gradient (None: the whole vocabulary)."""
    budget: int | None = None
    """Most forward rows per item (None: as many as ``rounds`` need); the search stops
    before a step it cannot pay for."""

    def __post_init__(self) -> None:
        check_scoring_positions(self.positions)
        if check_multiplier(self.multiplier) == 0.0:
            raise ValueError("multiplier must be non-zero: there is no steered behaviour at 0")
        if self.n_tokens < 1 or self.rounds < 1 or self.batch_size < 1:
            raise ValueError("n_tokens, rounds and batch_size must be >= 1")
        if self.fluency < 0:
            raise ValueError(f"fluency must be >= 0, got {self.fluency}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 (or None for the whole vocabulary), got "
                             f"{self.top_k}")
        if self.budget is not None and self.top_k is not None:
            need = step_cost(self.top_k, self.fluency) + SCORING_ROWS
            if self.budget < need:
                raise ValueError(f"adversarial budget of {self.budget} forward rows per item is "
                                 f"too small to run: scoring the item and one search step with "
                                 f"top_k={self.top_k} need {need}")


SCORING_ROWS = 4
"""Forward rows spent outside the steps: the original and the found input, each steered and
unsteered."""


def step_cost(n_candidates: int, fluency: float, gradient: bool = True) -> int:
    """Forward rows of one search step: the gradient pass (steered, plus unsteered when the
    fluency term counts) and the candidates (the same two forwards each)."""
    per = 2 if fluency > 0 else 1
    return (per if gradient else 0) + n_candidates * per


@dataclass
class AdversarialResult:
    """Per item: the found input and its scores."""

    inputs: list[str]
    """Adversarial prompts (decoded, with the inserted tokens)."""
    inserted: list[str]
    """The inserted text alone."""
    propensity_before: list[float]
    """Steered propensity on the original prompt."""
    propensity_after: list[float]
    """Steered propensity on the adversarial prompt."""
    reversed: list[bool]
    """Whether the steered propensity has the opposite sign of the multiplier."""
    cross_entropy_before: list[float]
    """Unsteered mean cross-entropy (nats/token) of the original prompt."""
    cross_entropy_after: list[float]
    """Unsteered mean cross-entropy of the adversarial prompt."""
    success_rate: float
    """Share of items reversed."""
    forward_rows: list[int]
    """Per item: sequences run forward (gradient passes, candidates, scoring)."""
    backward_passes: list[int]
    """Per item: gradient passes (one backward each)."""
    top_k: int | None = None
    """Candidates per step (None: the whole vocabulary)."""
    positions: str = "from_prompt_end"
    """The position rule the vector was added with."""


def candidate_tokens(tokenizer: Any) -> list[int]:
    """Every vocabulary id except special tokens."""
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special]


def _propensity(logits_CV: Tensor, item: AnswerItem) -> Tensor:
    return logits_CV[:, item.matching_id].float() - logits_CV[:, item.not_matching_id].float()


def _cross_entropy(logits_CTV: Tensor, ids_CT: Tensor) -> Tensor:
    nll_CT = torch.nn.functional.cross_entropy(
        logits_CTV[:, :-1].float().transpose(1, 2), ids_CT[:, 1:], reduction="none")
    return nll_CT.mean(-1)


class Search:
    """The search state of one model, vector and config (counts the forward rows)."""

    def __init__(self, model: Any, sv: SteeringVector, cfg: AdversarialConfig) -> None:
        self.model, self.sv, self.cfg = model, sv, cfg
        self.hf = hf_module(model)
        self.device = input_device(model)
        self.sign = math.copysign(1.0, cfg.multiplier)
        self.rows = 0
        self.backward = 0

    def scores(self, item: AnswerItem, ids_CT: Int[Tensor, "C T"], with_ce: bool
               ) -> tuple[Float[Tensor, " C"], Float[Tensor, " C"]]:
        """Steered propensity and (when ``with_ce``) unsteered cross-entropy per row."""
        props, ces = [], []
        for start in range(0, len(ids_CT), self.cfg.batch_size):
            chunk_CT = ids_CT[start:start + self.cfg.batch_size].to(self.device)
            with torch.no_grad():
                with self.sv.apply(self.model, self.cfg.multiplier, positions=self.cfg.positions,
                                   force=True):
                    props.append(_propensity(self.hf(input_ids=chunk_CT).logits[:, -1], item))
                if with_ce:
                    ces.append(_cross_entropy(self.hf(input_ids=chunk_CT).logits, chunk_CT))
            self.rows += len(chunk_CT) * (2 if with_ce else 1)
        prop_C = torch.cat(props).cpu()
        ce_C = torch.cat(ces).cpu() if with_ce else torch.zeros(len(prop_C), device="cpu")
        return prop_C, ce_C

    def gradient(self, item: AnswerItem, ids_T: Int[Tensor, " T"], at: int) -> Float[Tensor, " V"]:
        """d objective / d one-hot of the token at ``at`` (GCG's candidate ranking)."""
        with torch.enable_grad():
            return self._gradient(item, ids_T, at)

    def _gradient(self, item: AnswerItem, ids_T: Tensor, at: int) -> Tensor:
        embed = self.hf.get_input_embeddings()
        ids_1T = ids_T.to(self.device)[None]
        onehot_V = torch.zeros(embed.weight.shape[0], dtype=embed.weight.dtype,
                               device=embed.weight.device)
        onehot_V[ids_1T[0, at]] = 1.0
        onehot_V.requires_grad_(True)
        base_1TD = embed(ids_1T).detach()
        token_D = (onehot_V @ embed.weight).to(base_1TD.device)
        embeds_1TD = torch.cat([base_1TD[:, :at], token_D[None, None], base_1TD[:, at + 1:]], 1)
        with self.sv.apply(self.model, self.cfg.multiplier, positions=self.cfg.positions,
                           force=True):
            loss = self.sign * _propensity(self.hf(inputs_embeds=embeds_1TD).logits[:, -1],
                                           item)[0]
        self.rows += 1
        if self.cfg.fluency > 0:
            logits_1TV = self.hf(inputs_embeds=embeds_1TD).logits
            loss = loss + self.cfg.fluency * _cross_entropy(logits_1TV, ids_1T)[0]
            self.rows += 1
        (grad_V,) = torch.autograd.grad(loss, onehot_V)  # the weights' .grad stay untouched
        self.backward += 1
        return grad_V.detach().float().cpu()

    def shortlist(self, item: AnswerItem, ids_T: Tensor, at: int, candidates: Tensor) -> Tensor:
        """The ``top_k`` candidates whose one-hot gradient most lowers the objective (all
        candidates when ``top_k`` is None or covers them)."""
        k = self.cfg.top_k
        if k is None or k >= len(candidates):
            return candidates
        grad_V = self.gradient(item, ids_T, at)
        return candidates[torch.topk(-grad_V[candidates], k).indices]

    def affordable(self, n_candidates: int, gradient: bool) -> bool:
        """Whether one more step fits in the budget (leaving the final scoring's rows)."""
        if self.cfg.budget is None:
            return True
        need = step_cost(n_candidates, self.cfg.fluency, gradient)
        return self.rows + need + 2 <= self.cfg.budget


def _assemble(item: AnswerItem, adv: list[int], bos: int | None) -> list[int]:
    head = 1 if bos is not None and item.prefix_ids[:1] == [bos] else 0
    return item.prefix_ids[:head] + adv + item.prefix_ids[head:]


def search_item(
    search: Search, item: AnswerItem, candidates: list[int], gen: torch.Generator
) -> list[int]:
    """Greedy coordinate search for one item; returns the inserted ids."""
    cfg = search.cfg
    bos = search.model.tokenizer.bos_token_id
    cand_C = torch.tensor(candidates, dtype=torch.long, device="cpu")
    adv = cand_C[torch.randint(len(candidates), (cfg.n_tokens,), generator=gen,
                               device="cpu")].tolist()
    head = 1 if bos is not None and item.prefix_ids[:1] == [bos] else 0
    uses_gradient = cfg.top_k is not None and cfg.top_k < len(candidates)
    n_scored = min(cfg.top_k or len(candidates), len(candidates))
    prop = math.inf
    for _ in range(cfg.rounds):
        for pos in range(cfg.n_tokens):
            if not search.affordable(n_scored, uses_gradient):
                logger.info("adversarial budget of %s rows spent", cfg.budget)
                return adv
            ids_T = torch.tensor(_assemble(item, adv, bos), dtype=torch.long, device="cpu")
            short_C = search.shortlist(item, ids_T, head + pos, cand_C)
            rows = [_assemble(item, adv[:pos] + [int(c)] + adv[pos + 1:], bos) for c in short_C]
            props_C, ces_C = search.scores(item, torch.tensor(rows, device="cpu"),
                                           with_ce=cfg.fluency > 0)
            best = int(torch.argmin(search.sign * props_C + cfg.fluency * ces_C))
            adv[pos], prop = int(short_C[best]), float(props_C[best])
        if search.sign * prop < 0:
            break
    return adv


def adversarial_search(
    model: Any, pairs: list[Pair], sv: SteeringVector, cfg: AdversarialConfig
) -> AdversarialResult:
    """Search every item for an input that reverses ``cfg.multiplier * sv``.

    Example:
        >>> from cae.model import load_language_model
        >>> from cae.organism.corpus import items
        >>> lm = load_language_model("organism:tiny")
        >>> sv = SteeringVector.train(lm, [i.pair() for i in items("kind", "ab", 32, "train")], [1])
        >>> res = adversarial_search(lm, [i.pair() for i in items("kind", "ab", 2)], sv,
        ...                          AdversarialConfig(4.0, n_tokens=1, rounds=1, top_k=8))
        >>> len(res.inputs), res.forward_rows
        (2, [13, 13])
    """
    tok = model.tokenizer
    items = answer_items(tok, pairs)
    candidates = candidate_tokens(tok)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    out: dict[str, list] = {k: [] for k in ("inputs", "inserted", "before", "after", "ce0",
                                            "ce1", "rows", "backward")}
    for item in tqdm(items, desc="adversarial search", disable=len(items) < 2):
        search = Search(model, sv, cfg)
        p0, c0 = search.scores(item, torch.tensor([item.prefix_ids], device="cpu"), with_ce=True)
        adv = search_item(search, item, candidates, gen)
        found = _assemble(item, adv, tok.bos_token_id)
        p1, c1 = search.scores(item, torch.tensor([found], device="cpu"), with_ce=True)
        out["inputs"].append(tok.decode(found, skip_special_tokens=True))
        out["inserted"].append(tok.decode(adv))
        out["before"].append(float(p0[0]))
        out["after"].append(float(p1[0]))
        out["ce0"].append(float(c0[0]))
        out["ce1"].append(float(c1[0]))
        out["rows"].append(search.rows)
        out["backward"].append(search.backward)
    sign = math.copysign(1.0, cfg.multiplier)
    reversed_ = [sign * p < 0 for p in out["after"]]
    return AdversarialResult(out["inputs"], out["inserted"], out["before"], out["after"],
                             reversed_, out["ce0"], out["ce1"], sum(reversed_) / len(reversed_),
                             out["rows"], out["backward"], cfg.top_k, cfg.positions)
