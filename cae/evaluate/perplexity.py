"""Perplexity cost of steering: does adding ``m * v`` make ordinary text less likely?

The CAE paper (Hao et al. 2025, arXiv 2505.03189) finds that steering raises perplexity.
The corpus is tokenized once and cut into non-overlapping windows of ``context`` tokens;
each window is scored unsteered and with the vector added at every multiplier.

Positions: CAA adds the vector from the end of the instruction on, to every later token.
Treating each window's first token as the instruction, that is every position of the
window, so the default is ``positions="all"`` and every predicted token is scored (a
teacher-forced stand-in for steered generation). ``from_prompt_end`` would only steer a
window's last token, which predicts nothing inside the window, and is refused.

Legend: W windows, T tokens per window, V vocabulary.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm import tqdm

from cae.apply import check_multiplier, check_positions
from cae.model import hf_module
from cae.vector import SteeringVector

logger = logging.getLogger(__name__)


@dataclass
class PerplexityConfig:
    """How the perplexity cost is measured."""

    multipliers: list[float]
    """Multipliers to score (0 is always scored as the unsteered baseline)."""
    context: int = 64
    """Tokens per window."""
    max_windows: int | None = None
    """Use at most this many windows (None: all)."""
    positions: str = "all"
    """Where the vector is added: ``all`` (every scored token) or ``generated``."""
    batch_size: int = 8
    """Windows per forward pass."""

    def __post_init__(self) -> None:
        self.multipliers = [check_multiplier(m) for m in self.multipliers]
        check_positions(self.positions)
        if self.positions == "from_prompt_end":
            raise ValueError("positions='from_prompt_end' steers only a window's last token, "
                             "which predicts nothing in it; use 'all'")
        if self.context < 2:
            raise ValueError(f"context must be >= 2 tokens, got {self.context}")
        if self.max_windows is not None and self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {self.max_windows}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def windows(tokenizer: Any, text: str, cfg: PerplexityConfig) -> Int[Tensor, "W T"]:
    """Non-overlapping windows of ``cfg.context`` tokens (special tokens excluded)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < cfg.context:
        raise ValueError(f"corpus is too short: {len(ids)} tokens, fewer than the requested "
                         f"context of {cfg.context}; give more text or a smaller context")
    n = len(ids) // cfg.context
    if cfg.max_windows is not None:
        n = min(n, cfg.max_windows)
    return torch.tensor(ids[: n * cfg.context]).view(n, cfg.context)


def mean_nll(model: Any, windows_WT: Int[Tensor, "W T"], batch_size: int) -> float:
    """Mean next-token negative log-likelihood over every predicted token of the windows."""
    hf = hf_module(model)
    total, count = 0.0, 0
    for start in range(0, len(windows_WT), batch_size):
        ids_BT = windows_WT[start:start + batch_size]
        with torch.no_grad():
            logits_BTV = hf(input_ids=ids_BT).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits_BTV.reshape(-1, logits_BTV.shape[-1]), ids_BT[:, 1:].reshape(-1),
            reduction="sum")
        total += float(nll)
        count += ids_BT[:, 1:].numel()
    return total / count


@dataclass
class PerplexityResult:
    """Perplexity per multiplier."""

    multipliers: list[float]
    """Multipliers scored, sorted, including 0."""
    perplexity: list[float]
    """exp(mean NLL) per multiplier."""
    baseline: float
    """Unsteered perplexity (multiplier 0)."""
    increase: list[float]
    """perplexity / baseline - 1 per multiplier."""
    n_windows: int
    """Windows scored."""
    n_tokens: int
    """Predicted tokens scored per multiplier."""


def perplexity_cost(
    model: Any, text: str, sv: SteeringVector, cfg: PerplexityConfig
) -> PerplexityResult:
    """Perplexity of ``text`` unsteered and steered by ``sv`` at each multiplier.

    Example:
        >>> from cae import SteeringVector
        >>> from cae.model import load_language_model
        >>> from cae.organism.corpus import neutral_text
        >>> lm = load_language_model("organism:tiny")
        >>> sv = SteeringVector.random(lm, [1], seed=0)
        >>> res = perplexity_cost(lm, neutral_text(100), sv, PerplexityConfig([2.0]))
        >>> res.multipliers
        [0.0, 2.0]
    """
    limit = getattr(hf_module(model).config, "max_position_embeddings", None)
    if limit is not None and cfg.context > limit:
        raise ValueError(f"context of {cfg.context} tokens exceeds the model's "
                         f"max_position_embeddings of {limit}")
    windows_WT = windows(model.tokenizer, text, cfg)
    multipliers = sorted(set(cfg.multipliers) | {0.0})
    ppl = []
    for m in tqdm(multipliers, desc="perplexity", disable=len(multipliers) < 4):
        if m == 0.0:
            nll = mean_nll(model, windows_WT, cfg.batch_size)
        else:
            with sv.apply(model, m, positions=cfg.positions, force=True):
                nll = mean_nll(model, windows_WT, cfg.batch_size)
        ppl.append(math.exp(nll))
    base = ppl[multipliers.index(0.0)]
    return PerplexityResult(multipliers, ppl, base, [p / base - 1 for p in ppl],
                            len(windows_WT), windows_WT[:, 1:].numel())
