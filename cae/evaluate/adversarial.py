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
cross-entropy of the input under the unsteered model. An item is *reversed* when the steered propensity has the
opposite sign of ``m``: the steered model prefers the answer steering pushes away from.

Legend: C candidates, T tokens, V vocabulary.
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
from cae.model import hf_module
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

    def __post_init__(self) -> None:
        check_scoring_positions(self.positions)
        if check_multiplier(self.multiplier) == 0.0:
            raise ValueError("multiplier must be non-zero: there is no steered behaviour at 0")
        if self.n_tokens < 1 or self.rounds < 1 or self.batch_size < 1:
            raise ValueError("n_tokens, rounds and batch_size must be >= 1")
        if self.fluency < 0:
            raise ValueError(f"fluency must be >= 0, got {self.fluency}")


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


def candidate_tokens(tokenizer: Any) -> list[int]:
    """Every vocabulary id except special tokens."""
    special = set(tokenizer.all_special_ids)
    return [i for i in range(len(tokenizer)) if i not in special]


def _scores(
    model: Any, sv: SteeringVector, item: AnswerItem, ids_CT: Int[Tensor, "C T"],
    cfg: AdversarialConfig,
) -> tuple[Float[Tensor, " C"], Float[Tensor, " C"]]:
    """Steered propensity and unsteered mean cross-entropy of each candidate input."""
    hf = hf_module(model)
    props, ces = [], []
    for start in range(0, len(ids_CT), cfg.batch_size):
        chunk_CT = ids_CT[start:start + cfg.batch_size]
        with torch.no_grad():
            with sv.apply(model, cfg.multiplier, positions=cfg.positions, force=True):
                last_CV = hf(input_ids=chunk_CT).logits[:, -1].float()
            logits_CTV = hf(input_ids=chunk_CT).logits[:, :-1].float()
        props.append(last_CV[:, item.matching_id] - last_CV[:, item.not_matching_id])
        nll_CT = torch.nn.functional.cross_entropy(
            logits_CTV.transpose(1, 2), chunk_CT[:, 1:], reduction="none")
        ces.append(nll_CT.mean(-1))
    return torch.cat(props), torch.cat(ces)


def _assemble(item: AnswerItem, adv: list[int], bos: int | None) -> list[int]:
    head = 1 if bos is not None and item.prefix_ids[:1] == [bos] else 0
    return item.prefix_ids[:head] + adv + item.prefix_ids[head:]


def search_item(
    model: Any, sv: SteeringVector, item: AnswerItem, cfg: AdversarialConfig,
    candidates: list[int], gen: torch.Generator,
) -> tuple[list[int], float, float]:
    """Greedy coordinate search for one item: (inserted ids, steered propensity, CE)."""
    bos = model.tokenizer.bos_token_id
    sign = math.copysign(1.0, cfg.multiplier)
    cand_C = torch.tensor(candidates)
    adv = cand_C[torch.randint(len(candidates), (cfg.n_tokens,), generator=gen)].tolist()
    prop, ce = 0.0, 0.0
    for _ in range(cfg.rounds):
        for pos in range(cfg.n_tokens):
            rows = [_assemble(item, adv[:pos] + [c] + adv[pos + 1:], bos) for c in candidates]
            props_C, ces_C = _scores(model, sv, item, torch.tensor(rows), cfg)
            best = int(torch.argmin(sign * props_C + cfg.fluency * ces_C))
            adv[pos], prop, ce = candidates[best], float(props_C[best]), float(ces_C[best])
        if sign * prop < 0:
            break
    return adv, prop, ce


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
        ...                          AdversarialConfig(4.0, n_tokens=1, rounds=1))
        >>> len(res.inputs)
        2
    """
    tok = model.tokenizer
    items = answer_items(tok, pairs)
    candidates = candidate_tokens(tok)
    gen = torch.Generator().manual_seed(cfg.seed)
    sign = math.copysign(1.0, cfg.multiplier)
    out: dict[str, list] = {k: [] for k in ("inputs", "inserted", "before", "after", "ce0", "ce1")}
    for item in tqdm(items, desc="adversarial search", disable=len(items) < 2):
        p0, c0 = _scores(model, sv, item, torch.tensor([item.prefix_ids]), cfg)
        adv, prop, ce = search_item(model, sv, item, cfg, candidates, gen)
        out["inputs"].append(tok.decode(_assemble(item, adv, tok.bos_token_id),
                                        skip_special_tokens=True))
        out["inserted"].append(tok.decode(adv))
        out["before"].append(float(p0[0]))
        out["after"].append(prop)
        out["ce0"].append(float(c0[0]))
        out["ce1"].append(ce)
    reversed_ = [sign * p < 0 for p in out["after"]]
    return AdversarialResult(out["inputs"], out["inserted"], out["before"], out["after"],
                             reversed_, out["ce0"], out["ce1"],
                             sum(reversed_) / len(reversed_))
