"""Token sampling for activation caches: keep K image tokens per image per kept step.

A 1,024 px FLUX.1 image has 4,096 image tokens per step, and neighbouring tokens are strongly
correlated; the paper (Shabalin et al. 2025, arXiv 2505.24360) and sdxl-unbox cache a random
subset of tokens per image so that the same disk holds activations from many more images.

The K positions of an image at a step are drawn from a generator seeded by ``(seed, prompt,
step)`` alone, so they do not depend on batching, sharding or resuming, and every image hook of
one cache keeps the same positions (an SAE on ``double.18.img`` and the MLP neurons of the same
block see the same tokens). Positions are kept in raster order; their ``(h, w)`` stay in the
provenance columns, so readers, ITDA and SAE training need nothing new. Text streams are not
sampled (their tokens are the prompt's, not the image's).

Example:
    >>> positions(64, 4, seed=0, prompt=3, step=0).tolist()  # doctest: +SKIP
    [5, 17, 40, 58]
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from sae_flux import hooks as hookpoints


def positions(n_tokens: int, k: int, seed: int, prompt: int, step: int) -> Tensor:
    """``k`` distinct token positions of ``0..n_tokens-1`` in increasing order, seeded by (seed, prompt, step)."""
    key = hashlib.blake2b(f"{seed}/{prompt}/{step}".encode(), digest_size=8).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(key, "little") & (2**63 - 1))
    return torch.randperm(n_tokens, generator=gen)[:k].sort().values


def check_tokens_per_image(k: int, grid: tuple[int, int], resolution: int) -> None:
    """One line when ``k`` exceeds the image tokens of one image."""
    n_tokens = grid[0] * grid[1]
    if k > n_tokens:
        raise ValueError(
            f"--tokens-per-image {k:,} is larger than the {n_tokens:,} image tokens of a "
            f"{resolution} px image ({grid[0]} x {grid[1]} grid)"
        )


def kept_rows(
    hook: str, shape: tuple[int, int, int], prompt_ids: list[int], steps: list[int], k: int | None, seed: int
) -> Tensor | None:
    """Rows of ``Activations.tokens(hook)`` to keep (``None``: all; text streams are never sampled).

    ``shape`` is ``(prompt, step, token)`` of the hook's activations.
    """
    if k is None or not hookpoints.parse(hook).is_image:
        return None
    n_prompt, n_step, n_token = shape
    rows = [
        (p * n_step + s) * n_token + positions(n_token, k, seed, prompt_ids[p], steps[s])
        for p in range(n_prompt)
        for s in range(n_step)
    ]
    return torch.cat(rows)
