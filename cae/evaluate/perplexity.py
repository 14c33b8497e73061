"""Perplexity cost of steering: does adding ``m * v`` make ordinary text less likely?

The CAE paper (Hao et al. 2025, arXiv 2505.03189) finds that steering raises perplexity.
The corpus is tokenized once and cut into non-overlapping windows of ``context`` tokens;
each window is scored unsteered and with the vector added at every multiplier.

Positions: a window is read the way a model reads text it generates, so the run's position
rule means here what it means in generation (``cae.apply``): its first ``prompt_tokens``
tokens are a prompt forward, and every later token is fed as a one-token decoding step on
the key-value cache (teacher-forced: the window's own tokens, not sampled ones). So ``all``
steers every position; ``from_prompt_end`` the last prompt token and every later token
(with the default one-token prompt: every window token); ``generated`` every token after
the prompt. Every token of the window after the first is scored. (Under ``all`` every
position of every forward is steered, so the window is read in one forward, which adds the
vector at the same positions and costs one forward instead of one per token.)

BOS: when the tokenizer starts its encodings with a BOS token (Llama, Gemma, the organism),
every window is read after that token, as the model saw text in training, and then the
window's first token is scored too; a tokenizer without one (GPT-2) gets none.

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
from cae.model import cache_argument, hf_module, input_device, output_cache
from cae.vector import SteeringVector

logger = logging.getLogger(__name__)


@dataclass
class PerplexityConfig:
    """How the perplexity cost is measured.

    Example:
        >>> cfg = PerplexityConfig([-4, 4], context=32, max_windows=8)
        >>> cfg.multipliers, cfg.positions
        ([-4.0, 4.0], 'all')
    """

    multipliers: list[float]
    """Multipliers to score (0 is always scored as the unsteered baseline)."""
    context: int = 64
    """Tokens per window."""
    max_windows: int | None = None
    """Use at most this many windows (None: all)."""
    positions: str = "all"
    """Where the vector is added (``cae.apply.POSITIONS``), as in generation (module doc)."""
    batch_size: int = 16
    """Windows per forward pass."""
    prompt_tokens: int = 1
    """Window tokens read as the prompt forward; the rest are decoding steps."""

    def __post_init__(self) -> None:
        self.multipliers = [check_multiplier(m) for m in self.multipliers]
        check_positions(self.positions)
        if self.context < 2:
            raise ValueError(f"context must be >= 2 tokens, got {self.context}")
        if not 1 <= self.prompt_tokens < self.context:
            raise ValueError(f"prompt_tokens must be in [1, context), got {self.prompt_tokens}")
        if self.max_windows is not None and self.max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {self.max_windows}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def bos_prefix(tokenizer: Any) -> list[int]:
    """``[bos_token_id]`` when the tokenizer starts its encodings with it, else ``[]``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if ids[:1] == [bos] else []


def windows(tokenizer: Any, text: str, cfg: PerplexityConfig) -> Int[Tensor, "W T"]:
    """Non-overlapping windows of ``cfg.context`` tokens (special tokens excluded; on the CPU:
    the scorer moves each batch to the model's device)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < cfg.context:
        raise ValueError(f"corpus is too short: {len(ids)} tokens, fewer than the requested "
                         f"context of {cfg.context}; give more text or a smaller context")
    n = len(ids) // cfg.context
    if cfg.max_windows is not None:
        n = min(n, cfg.max_windows)
    return torch.tensor(ids[: n * cfg.context], device="cpu").view(n, cfg.context)


def _nll_sum(logits_BTV: Tensor, targets_BT: Tensor) -> float:
    return float(torch.nn.functional.cross_entropy(
        logits_BTV.float().reshape(-1, logits_BTV.shape[-1]), targets_BT.reshape(-1),
        reduction="sum"))


def read_as_generated(
    model: Any, ids_BT: Int[Tensor, "B T"], prompt_len: int, one_forward: bool = False
) -> float:
    """Summed next-token NLL of ``ids_BT[:, 1:]``: a prompt forward over the first
    ``prompt_len`` tokens, then one decoding step per later token on the key-value cache
    (``one_forward``: the whole window in one forward, for the ``all`` rule)."""
    hf = hf_module(model)
    cache_kw = cache_argument(model)
    if one_forward:
        prompt_len = ids_BT.shape[1]
    with torch.no_grad():
        out = hf(input_ids=ids_BT[:, :prompt_len], use_cache=True)
        total = _nll_sum(out.logits[:, :-1], ids_BT[:, 1:prompt_len])
        if prompt_len == ids_BT.shape[1]:
            return total
        total += _nll_sum(out.logits[:, -1:], ids_BT[:, prompt_len:prompt_len + 1])
        for t in range(prompt_len, ids_BT.shape[1] - 1):
            out = hf(input_ids=ids_BT[:, t:t + 1], use_cache=True,
                     **{cache_kw: output_cache(out)})
            total += _nll_sum(out.logits[:, -1:], ids_BT[:, t + 1:t + 2])
    return total


def mean_nll(
    model: Any, windows_WT: Int[Tensor, "W T"], batch_size: int, prompt_tokens: int = 1,
    bos: list[int] | None = None, one_forward: bool = False,
) -> float:
    """Mean next-token negative log-likelihood over every scored token of the windows (read
    after ``bos``; see the module doc)."""
    device = input_device(model)
    head = list(bos or [])
    total, count = 0.0, 0
    for start in range(0, len(windows_WT), batch_size):
        ids_BT = windows_WT[start:start + batch_size].to(device)
        if head:
            ids_BT = torch.cat([torch.tensor(head, device=device).expand(len(ids_BT), -1),
                                ids_BT], dim=1)
        total += read_as_generated(model, ids_BT, len(head) + prompt_tokens, one_forward)
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
    positions: str = "all"
    """The position rule the vector was added with."""
    bos: bool = False
    """Whether every window was read after the tokenizer's BOS token."""


def perplexity_cost(
    model: Any, text: str, sv: SteeringVector, cfg: PerplexityConfig
) -> PerplexityResult:
    """Perplexity of ``text`` unsteered and steered by ``sv`` at each multiplier, the vector
    added at ``cfg.positions``.

    Example:
        >>> from cae import SteeringVector
        >>> from cae.model import load_language_model
        >>> from cae.organism.corpus import neutral_text
        >>> lm = load_language_model("organism:tiny")
        >>> sv = SteeringVector.random(lm, [1], seed=0)
        >>> res = perplexity_cost(lm, neutral_text(100), sv, PerplexityConfig([2.0]))
        >>> res.multipliers, res.bos
        ([0.0, 2.0], True)
    """
    limit = getattr(hf_module(model).config, "max_position_embeddings", None)
    bos = bos_prefix(model.tokenizer)
    if limit is not None and cfg.context + len(bos) > limit:
        raise ValueError(f"context of {cfg.context} tokens (+{len(bos)} BOS) exceeds the "
                         f"model's max_position_embeddings of {limit}")
    windows_WT = windows(model.tokenizer, text, cfg)
    multipliers = sorted(set(cfg.multipliers) | {0.0})
    ppl = []
    for m in tqdm(multipliers, desc="perplexity", disable=len(multipliers) < 4):
        if m == 0.0:
            nll = mean_nll(model, windows_WT, cfg.batch_size, cfg.prompt_tokens, bos, True)
        else:
            with sv.apply(model, m, positions=cfg.positions, force=True):
                nll = mean_nll(model, windows_WT, cfg.batch_size, cfg.prompt_tokens, bos,
                               cfg.positions == "all")
        ppl.append(math.exp(nll))
    base = ppl[multipliers.index(0.0)]
    n_tokens = len(windows_WT) * (cfg.context - 1 + len(bos))
    return PerplexityResult(multipliers, ppl, base, [p / base - 1 for p in ppl],
                            len(windows_WT), n_tokens, cfg.positions, bool(bos))
