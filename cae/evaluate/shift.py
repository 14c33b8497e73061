"""In- vs out-of-distribution: the same vector scored on several item sets, side by side.

The CAE paper (Hao et al. 2025, arXiv 2505.03189) finds steering reliable only in
distribution. Here a vector's effect is measured on named item sets: A/B-style sets (any
``Pair`` whose completions differ at one answer token: the training template's held-out
items, other templates) by the mean ``p(matching)`` steered minus unsteered, and
open-ended prompts by a pluggable judge scoring greedy steered continuations (a function
``(prompt, completion) -> score``; a classifier or an LLM behind an OpenAI-compatible
endpoint can be wrapped as one). Each effect has a normal-approximation 95% confidence
interval over items (the paired per-item differences).

Every function takes the run's position rule (``cae.apply.POSITIONS``): A/B sets are scored
in a prompt forward (``all`` or ``from_prompt_end``); continuations are generated with the
vector added by the same rule (``from_prompt_end``: the last prompt token and every
generated token; ``generated``: the generated tokens only; ``all``: everything).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cae.apply import check_multiplier, check_positions
from cae.evaluate.behaviour import answer_items, steered_propensities
from cae.model import hf_module, input_device
from cae.pairs import Pair
from cae.vector import SteeringVector

logger = logging.getLogger(__name__)

Judge = Callable[[str, str], float]
"""(prompt, completion) -> behaviour score (higher = more matching)."""
Z95 = 1.959963984540054


@dataclass
class SetEffect:
    """Effect of steering on one item set."""

    name: str
    """Set name (``in-distribution``, a template name, an OOD file)."""
    metric: str
    """``p_matching`` (A/B sets) or ``judge`` (open-ended)."""
    n: int
    """Items."""
    unsteered: float
    """Mean metric without steering."""
    steered: float
    """Mean metric with ``multiplier * sv``."""
    effect: float
    """steered - unsteered (mean of the per-item differences)."""
    ci95: tuple[float, float]
    """Normal-approximation 95% interval of ``effect`` (equal ends when n = 1)."""
    method: str = "steering"
    """``steering`` (``steered`` = with the vector), or a prompting baseline
    (``prompt:instruction`` / ``prompt:examples``: ``steered`` = with the prompt, no vector;
    ``cae.evaluate.baselines``)."""


def mean_ci(diffs: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Mean and its normal-approximation 95% interval (sample standard deviation)."""
    if not diffs:
        raise ValueError("cannot average an empty set of items")
    n, mean = len(diffs), sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    half = Z95 * sd / math.sqrt(n)
    return mean, (mean - half, mean + half)


def choice_effect(
    model: Any, name: str, pairs: Sequence[Pair], sv: SteeringVector, multiplier: float,
    positions: str = "from_prompt_end", unsteered: Tensor | None = None,
) -> SetEffect:
    """Mean p(matching) steered vs unsteered on an A/B-style set (``unsteered``: the items'
    unsteered propensities, if already known)."""
    items = answer_items(model.tokenizer, pairs)
    if unsteered is None:
        unsteered = steered_propensities(model, model.tokenizer, items, None, 0.0)
    base = torch.sigmoid(unsteered)
    steered = torch.sigmoid(steered_propensities(model, model.tokenizer, items, sv,
                                                 check_multiplier(multiplier), positions))
    effect, ci = mean_ci((steered - base).tolist())
    return SetEffect(name, "p_matching", len(items), float(base.mean()), float(steered.mean()),
                     effect, ci)


def continuations(
    model: Any, prompts: Sequence[str], sv: SteeringVector | None, multiplier: float,
    max_new_tokens: int = 12, positions: str = "from_prompt_end", batch_size: int = 32,
) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches), steered at ``positions``
    when ``sv`` is given."""
    from cae.evaluate.behaviour import left_padded

    check_positions(positions)
    hf, tok = hf_module(model), model.tokenizer
    device = input_device(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    settings = {"max_new_tokens": max_new_tokens, "do_sample": False, "pad_token_id": pad}
    out = []
    for start in range(0, len(prompts), batch_size):
        rows = [tok(p)["input_ids"] for p in prompts[start:start + batch_size]]
        ids_BT, mask_BT, _ = left_padded(rows, pad, device)
        with torch.no_grad():
            if sv is None or multiplier == 0.0:
                ids = hf.generate(input_ids=ids_BT, attention_mask=mask_BT,  # type: ignore[operator]
                                  **settings)
            else:
                with sv.apply(model, multiplier, positions=positions, force=True):
                    ids = hf.generate(input_ids=ids_BT, attention_mask=mask_BT,  # type: ignore[operator]
                                      **settings)
        out += [tok.decode(row[ids_BT.shape[1]:], skip_special_tokens=True) for row in ids]
    return out


def score_all(
    judge: Judge, prompts: Sequence[str], completions: Sequence[str],
    done: Sequence[float] = (),
) -> list[float]:
    """Judge every (prompt, completion); a ``JudgeError`` carries ``done`` + the scores so far.

    A judge must return a finite real number; anything else (text, None, NaN) is a
    ``JudgeError`` naming the value and the prompt.
    """
    from cae.evaluate.judge import JudgeError

    scores: list[float] = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        try:
            value = judge(prompt, completion)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not math.isfinite(value):
                raise JudgeError(f"judge returned {value!r} for prompt {i} ({prompt[:40]!r}), "
                                 "not a finite number")
            scores.append(float(value))
        except JudgeError as err:
            err.partial = [*done, *scores]
            raise
    return scores


def judged_effect(
    model: Any, name: str, prompts: Sequence[str], sv: SteeringVector, multiplier: float,
    judge: Judge, max_new_tokens: int = 12, positions: str = "from_prompt_end",
    unsteered: Sequence[float] | None = None,
) -> SetEffect:
    """Mean judge score of greedy continuations steered at ``positions`` vs unsteered ones
    (open-ended set; ``unsteered``: the unsteered scores, if already known)."""
    if not prompts:
        raise ValueError(f"set {name!r} has no prompts")
    m = check_multiplier(multiplier)
    base = list(unsteered) if unsteered is not None else score_all(
        judge, prompts, continuations(model, prompts, None, 0.0, max_new_tokens))
    steer = score_all(judge, prompts,
                      continuations(model, prompts, sv, m, max_new_tokens, positions), done=base)
    effect, ci = mean_ci([s - b for s, b in zip(steer, base, strict=True)])
    return SetEffect(name, "judge", len(prompts), sum(base) / len(base),
                     sum(steer) / len(steer), effect, ci)


def distribution_shift(
    model: Any, sv: SteeringVector, multiplier: float,
    choice_sets: Mapping[str, Sequence[Pair]],
    open_sets: Mapping[str, Sequence[str]] | None = None, judge: Judge | None = None,
    positions: str = "from_prompt_end",
) -> list[SetEffect]:
    """Effects on every named set, A/B-style sets first (side by side, same vector, the same
    position rule ``positions`` everywhere).

    Example:
        >>> from cae.model import load_language_model
        >>> from cae.organism.corpus import items, judge
        >>> lm = load_language_model("organism:tiny")
        >>> sv = SteeringVector.train(lm, [i.pair() for i in items("kind", "ab", 32, "train")], [1])
        >>> sets = {f: [i.pair() for i in items("kind", f, 8)] for f in ("ab", "option")}
        >>> opens = {"open": [i.prompt for i in items("kind", "open", 4)]}
        >>> rows = distribution_shift(lm, sv, 4.0, sets, opens, lambda p, c: judge("kind", c))
        >>> [r.name for r in rows]
        ['ab', 'option', 'open']
    """
    if open_sets and judge is None:
        raise ValueError("open-ended sets need a judge: a function (prompt, completion) -> score")
    rows = [choice_effect(model, name, pairs, sv, multiplier, positions)
            for name, pairs in choice_sets.items()]
    for name, prompts in (open_sets or {}).items():
        rows.append(judged_effect(model, name, prompts, sv, multiplier, judge,  # type: ignore[arg-type]
                                  positions=positions))
    return rows
