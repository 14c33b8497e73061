"""ITDA construction, Algorithm 1 of Leask, Nanda, Al Moubayed (ICML 2025, arXiv 2505.17769).

Seed the dictionary with a sample of the first batch; then for every batch encode each
activation with the current dictionary and add, normalised, every activation whose relative
reconstruction loss ``||x - x_hat||^2 / ||x||^2`` exceeds ``loss_threshold``. Optionally drop
a candidate whose cosine with an atom (or an earlier candidate) exceeds ``dedup_cosine``, and
stop at ``max_atoms``. Everything happens in the normalised space ``(x - mean) / std`` whose
statistics come from the first batch. The process is deterministic for a fixed ``seed``.

This module is the public entry point, :func:`build`, returning an :class:`itda.model.ITDA`;
the algorithm itself lives in :mod:`itda.construction` (below the model class, so that
``ITDA.build`` reaches it without a cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor

from itda.build_config import BuildConfig
from itda.construction import ActivationBatch, BuildError, BuildState, grow
from itda.model import ITDA

__all__ = ["ActivationBatch", "BuildConfig", "BuildError", "BuildState", "build"]


def build(
    batches: Iterable[Tensor | ActivationBatch | tuple],
    config: BuildConfig,
    *,
    resume: ITDA | BuildState | None = None,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
    on_batch: Callable[[ITDA], None] | None = None,
    checkpoint: Callable[[BuildState], object] | None = None,
    checkpoint_every: int = 0,
) -> ITDA:
    """Build an ITDA from a stream of activation batches (Algorithm 1).

    ``batches`` yields ``Tensor[n, d]``, ``ActivationBatch`` or ``(acts, prov)`` tuples.
    ``resume`` continues from a partial dictionary (its statistics and atoms are kept), e.g.
    the ``partial`` of a ``BuildError`` or a saved dictionary loaded with ``ITDA.load``, or
    exactly from a checkpointed :class:`BuildState` (:mod:`itda.checkpoint`); a resumed build
    whose stream has nothing left returns the dictionary as it is.
    ``on_batch`` receives a snapshot of the dictionary after every batch (for learning curves);
    ``checkpoint`` receives the state after every ``checkpoint_every`` batches (0: never).

    Example:
        >>> import torch
        >>> from itda.build import BuildConfig, build
        >>> acts = torch.randn(1024, 16)
        >>> d = build(acts.split(256), BuildConfig(target_l0=4, loss_threshold=0.4,
        ...           max_atoms=300), progress=False)
        >>> d.cfg.target_l0, d.cfg.d_in
        (4, 16)
    """
    return grow(batches, config, ITDA.from_build_state, resume=resume, progress=progress,
                metadata=metadata, on_batch=on_batch, checkpoint=checkpoint,
                checkpoint_every=checkpoint_every)
