"""Activation sources for SAE training: a cache on disk, tensors in memory, or a live Flux stream.

All three expose what ``SAETrainer`` needs through one small protocol, the one
:class:`sae_flux.cache.CacheReader` already has: ``d_model``, ``num_tokens`` (tokens per epoch,
``None`` for a stream that generates fresh data every epoch) and
``batches(batch_size, seed, buffer_tokens, epochs)`` yielding shuffled ``(batch, d_model)``
tensors, deterministic for a given seed (so a resumed run sees exactly the batches an uninterrupted
run would). Streaming follows the data flow of Shabalin et al. 2025 (arXiv 2505.24360): image
tokens of one hook point, generated prompt by prompt from pure noise.

Data smaller than one batch is handled in one place, :func:`batch_rows`: an endless stream
(``epochs=None``) over it is refused at once (each epoch's partial batch would be dropped and the
stream would never yield), a finite one yields each epoch's tokens as one short batch with a
warning.

Legend: N tokens, D model width.

Example:
    >>> from sae_flux.flux import Flux
    >>> source = FluxStream(Flux.tiny(), ["a red circle"] * 64, "double.1.img")
    >>> batch_BD = next(source.batches(batch_size=256, seed=0))
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from jaxtyping import Float
from torch import Tensor

logger = logging.getLogger(__name__)


class ActivationSource(Protocol):
    """Anything that yields shuffled activation batches of a fixed width."""

    @property
    def d_model(self) -> int: ...

    @property
    def num_tokens(self) -> int | None:
        """Tokens of one epoch (``None``: fresh data every epoch, no fixed size)."""
        ...

    def batches(
        self, batch_size: int, seed: int = 0, buffer_tokens: int = 262_144, epochs: int | None = 1
    ) -> Iterator[Float[Tensor, "batch d"]]: ...


def batch_rows(num_tokens: int, batch_size: int, epochs: int | None, where: str) -> int:
    """Rows per batch a stream over ``num_tokens`` tokens per epoch can yield; refuses what would spin.

    ``batch_size`` when one epoch fills at least one batch. When it cannot, an endless stream
    (``epochs=None``) raises at once, naming the token count and the batch size (it would drop each
    epoch's partial batch and never yield); a finite stream yields every epoch's tokens as one
    batch of ``num_tokens`` rows, with a warning.

    Example:
        >>> batch_rows(10_000, 4096, None, "cache c")
        4096
        >>> batch_rows(2000, 4096, 1, "cache c")  # logs a warning
        2000
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_tokens < 1:
        raise ValueError(f"{where} holds no tokens")
    if num_tokens >= batch_size:
        return batch_size
    if epochs is None:
        raise ValueError(
            f"{where} holds {num_tokens:,} tokens, fewer than one batch of {batch_size:,}: "
            f"lower the batch size to at most {num_tokens:,} or add data"
        )
    logger.warning("%s holds %s tokens, fewer than one batch of %s: each epoch yields them all as one "
                   "batch of %s", where, f"{num_tokens:,}", f"{batch_size:,}", f"{num_tokens:,}")
    return num_tokens


class TensorSource:
    """Activations already in memory, reshuffled every epoch."""

    def __init__(self, acts_ND: Float[Tensor, "n d"]) -> None:
        if acts_ND.ndim != 2 or acts_ND.shape[0] == 0:
            raise ValueError(f"TensorSource needs a non-empty (tokens, d_model) tensor, got {tuple(acts_ND.shape)}")
        self.acts_ND = acts_ND

    @property
    def d_model(self) -> int:
        return int(self.acts_ND.shape[1])

    @property
    def num_tokens(self) -> int:
        return int(self.acts_ND.shape[0])

    def batches(
        self, batch_size: int, seed: int = 0, buffer_tokens: int = 262_144, epochs: int | None = 1
    ) -> Iterator[Tensor]:
        """Shuffled batches, reshuffled every epoch (``buffer_tokens`` is unused: all are in memory)."""
        batch_size = batch_rows(self.num_tokens, batch_size, epochs, "the tensor source")
        return self._batches(batch_size, seed, epochs)

    def _batches(self, batch_size: int, seed: int, epochs: int | None) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(seed)
        epoch = 0
        while epochs is None or epoch < epochs:
            order = torch.randperm(self.acts_ND.shape[0], generator=gen)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                yield self.acts_ND[order[start : start + batch_size]].float()
            epoch += 1


class FluxStream:
    """Activations of one hook captured on the fly from a :class:`sae_flux.Flux`.

    Epoch ``e`` generates prompt ``j`` from seed ``seed + e * len(prompts) + j``, so every epoch
    sees fresh noise and the stream is reproducible from ``seed``.
    """

    def __init__(
        self,
        flux: Any,
        prompts: Sequence[str],
        hook: str,
        num_inference_steps: int | None = None,
        prompts_per_call: int = 8,
    ) -> None:
        if not prompts:
            raise ValueError("FluxStream needs at least one prompt")
        self.flux, self.prompts, self.hook = flux, list(prompts), hook
        self.num_inference_steps = num_inference_steps
        self.prompts_per_call = prompts_per_call
        self._width = flux.width(hook)

    @property
    def d_model(self) -> int:
        return int(self._width)

    @property
    def num_tokens(self) -> None:
        """No fixed size: every epoch generates fresh images."""
        return None

    def tokens(self, seed: int, start: int, stop: int) -> Float[Tensor, "n d"]:
        """Tokens of the prompts at global stream positions ``start..stop`` (wrapping epochs)."""
        n = len(self.prompts)
        ids = list(range(start, stop))
        acts = self.flux.capture(
            [self.prompts[i % n] for i in ids],
            [self.hook],
            num_inference_steps=self.num_inference_steps,
            seed=seed,
            prompt_ids=ids,
            batch_size=self.prompts_per_call,
        )
        return acts.tokens(self.hook)

    def batches(
        self, batch_size: int, seed: int = 0, buffer_tokens: int = 262_144, epochs: int | None = 1
    ) -> Iterator[Tensor]:
        """Shuffled batches of freshly generated tokens (``epochs=None``: forever, never the same noise).

        A finite stream whose tokens do not fill one batch yields them as one short batch, with a
        warning (:func:`batch_rows`).
        """
        gen = torch.Generator().manual_seed(seed)
        total = None if epochs is None else epochs * len(self.prompts)
        pool = torch.empty(0, self.d_model)
        position, yielded = 0, False
        while total is None or position < total:
            stop = position + self.prompts_per_call if total is None else min(position + self.prompts_per_call, total)
            pool = torch.cat([pool, self.tokens(seed, position, stop)])
            position = stop
            if pool.shape[0] < max(buffer_tokens, batch_size):
                continue
            pool = pool[torch.randperm(pool.shape[0], generator=gen)]
            n_out = (pool.shape[0] - buffer_tokens // 2) // batch_size * batch_size
            for start in range(0, n_out, batch_size):
                yield pool[start : start + batch_size]
                yielded = True
            pool = pool[n_out:]
        pool = pool[torch.randperm(pool.shape[0], generator=gen)]
        if not yielded:
            batch_size = batch_rows(pool.shape[0], batch_size, epochs, f"the Flux stream of {len(self.prompts)} prompts")
        for start in range(0, pool.shape[0] - batch_size + 1, batch_size):
            yield pool[start : start + batch_size]
