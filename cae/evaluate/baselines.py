"""Baselines and side effects: what steering is compared with, and what else it moves.

AxBench (Wu et al., ICML 2025) finds that simply *asking* for a behaviour beats
representation steering on its benchmark, so a steering evaluation needs a prompting
baseline measured the same way: here the same items with an instruction (``instruction``,
e.g. ``persona : warmly`` on the organism) or a few in-context training items answered the
asked-for way (``examples``) written before the prompt, toward the behaviour and away from
it, scored like the steered model. SteeringControl- and FaithSteer-style benchmarks also
report *side effects*: the vector for behaviour A applied to items of an unrelated
behaviour B (p(matching B) per multiplier) and to a capability probe (A/B items with a
correct answer: accuracy and p(correct) per multiplier).

Legend: I items.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cae.evaluate.behaviour import BehaviourConfig, answer_items, behaviour, steered_propensities
from cae.evaluate.shift import Judge, SetEffect, continuations, mean_ci, score_all
from cae.pairs import Pair
from cae.vector import SteeringVector

logger = logging.getLogger(__name__)


@dataclass
class Prompting:
    """One prompting baseline: what is written before every prompt."""

    name: str
    """``instruction`` or ``examples``."""
    toward: str
    """Prefix asking for the behaviour (ends with the separator)."""
    away: str
    """Prefix asking for the opposite (ends with the separator)."""


def prompting_baselines(
    instruction: str | None, instruction_not: str | None, examples: Sequence[Pair],
    separator: str,
) -> list[Prompting]:
    """The baselines a config asks for: an instruction pair and/or in-context examples
    (each example's prompt answered with its matching / not-matching completion).

    Example:
        >>> [p.toward for p in prompting_baselines("be kind", "be cruel", [], " | ")]
        ['be kind | ']
    """
    out = []
    if instruction is not None:
        if instruction_not is None:
            raise ValueError("a prompting instruction needs its opposite too (instruction_not)")
        out.append(Prompting("instruction", instruction + separator, instruction_not + separator))
    if examples:
        toward = separator.join(p.prompt + p.positive for p in examples) + separator
        away = separator.join(p.prompt + p.negative for p in examples) + separator
        out.append(Prompting("examples", toward, away))
    return out


def prefixed(pairs: Sequence[Pair], prefix: str) -> list[Pair]:
    """Every pair with ``prefix`` written before its prompt."""
    return [Pair(prefix + p.prompt, p.positive, p.negative) for p in pairs]


def prompted_choice(
    model: Any, name: str, pairs: Sequence[Pair], prompting: Prompting, toward: bool = True,
    unsteered: Tensor | None = None,
) -> SetEffect:
    """Mean p(matching) with the baseline's prefix vs without, on an A/B-style set (no vector;
    ``unsteered``: the items' propensities without the prefix, if already known)."""
    tok = model.tokenizer
    if unsteered is None:
        unsteered = steered_propensities(model, tok, answer_items(tok, pairs), None, 0.0)
    base = torch.sigmoid(unsteered)
    asked = prefixed(pairs, prompting.toward if toward else prompting.away)
    with_prefix = torch.sigmoid(steered_propensities(model, tok, answer_items(tok, asked), None,
                                                     0.0))
    effect, ci = mean_ci((with_prefix - base).tolist())
    method = f"prompt:{prompting.name}" + ("" if toward else ":away")
    return SetEffect(name, "p_matching", len(pairs), float(base.mean()),
                     float(with_prefix.mean()), effect, ci, method)


def prompted_open(
    model: Any, name: str, prompts: Sequence[str], prompting: Prompting, judge: Judge,
    max_new_tokens: int = 12, unsteered: Sequence[float] | None = None,
) -> SetEffect:
    """Mean judge score of continuations with the baseline's prefix vs without (the judge
    sees the original prompt and the continuation only; ``unsteered``: the scores without
    the prefix, if already known)."""
    base = list(unsteered) if unsteered is not None else score_all(
        judge, prompts, continuations(model, prompts, None, 0.0, max_new_tokens))
    asked = continuations(model, [prompting.toward + p for p in prompts], None, 0.0,
                          max_new_tokens)
    scores = score_all(judge, prompts, asked, done=base)
    effect, ci = mean_ci([s - b for s, b in zip(scores, base, strict=True)])
    return SetEffect(name, "judge", len(prompts), sum(base) / len(base),
                     sum(scores) / len(scores), effect, ci, f"prompt:{prompting.name}")


@dataclass
class SideEffect:
    """Behaviour A's vector on an unrelated set, at every multiplier."""

    name: str
    """Set name."""
    metric: str
    """``p_matching`` (another behaviour) or ``accuracy`` (a capability probe)."""
    multipliers: list[float]
    """Multipliers, in the order of the lists below."""
    mean_p_matching: list[float]
    """Per multiplier: mean p(matching) (capability: p(correct))."""
    accuracy: list[float]
    """Per multiplier: share of items whose matching (correct) answer has the larger logit."""
    steerability: float
    """Slope of the mean propensity on this set (0: no side effect on the logits)."""
    shift_at_top: float
    """Mean p(matching) at the largest positive multiplier minus at 0 (or the nearest)."""
    shift_ci95: tuple[float, float]
    """Its 95% interval over items."""


def side_effect(
    model: Any, name: str, pairs: Sequence[Pair], sv: SteeringVector, cfg: BehaviourConfig,
    metric: str = "p_matching",
) -> SideEffect:
    """Behaviour metrics of ``sv`` on an unrelated set (``metric`` names what it measures)."""
    res = behaviour(model, pairs, sv, cfg)
    ms = res.multipliers
    top = ms.index(max(ms))
    zero = min(range(len(ms)), key=lambda i: abs(ms[i]))
    diffs = [row[top] - row[zero] for row in res.p_matching]
    shift, ci = mean_ci(diffs)
    accuracy = [sum(row[i] > 0 for row in res.propensity) / len(res.propensity)
                for i in range(len(ms))]
    return SideEffect(name, metric, ms, res.mean_p_matching, accuracy, res.steerability,
                      shift, ci)


def side_effects(
    model: Any, sv: SteeringVector, cfg: BehaviourConfig,
    behaviours: Mapping[str, Sequence[Pair]], capability: Mapping[str, Sequence[Pair]],
) -> list[SideEffect]:
    """``side_effect`` on every unrelated behaviour set, then every capability probe."""
    rows = [side_effect(model, n, p, sv, cfg) for n, p in behaviours.items()]
    return rows + [side_effect(model, n, p, sv, cfg, "accuracy") for n, p in capability.items()]
