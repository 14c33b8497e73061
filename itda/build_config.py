"""The typed configuration of an ITDA build (:func:`itda.build.build`, ``itda build``).

Recorded in a saved dictionary's ``cfg.json`` under ``metadata.itda_build``. Light (no torch,
no sae_lens), so the ``itda`` CLI builds its parser from it at once.

Example:
    >>> cfg = BuildConfig(target_l0=16, loss_threshold=0.2)
    >>> cfg.seed_atoms, cfg.encoder
    (16, 'mp')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

STREAM_KEY = "itda_stream"
"""``metadata`` key of what identifies the stream (source, hook, batch size): recorded in
``metadata.itda_build.stream`` and compared when a build resumes (:mod:`itda.checkpoint`)."""


@dataclass
class BuildConfig:
    """How to build an ITDA; recorded in the saved ``cfg.json`` under ``metadata.itda_build``.

    Example:
        >>> import torch, itda
        >>> config = BuildConfig(target_l0=2, loss_threshold=0.5, max_atoms=40, seed=1)
        >>> d = itda.build(torch.randn(512, 8).split(128), config, progress=False)
        >>> d.cfg.d_sae <= 40, d.cfg.metadata.itda_build["loss_threshold"]
        (True, 0.5)
    """

    target_l0: int = 32
    """Pursuit steps used to encode while building (and by the finished dictionary)."""
    loss_threshold: float = 0.3
    """Add an activation when its relative loss exceeds this; in (0, 1]; lower -> larger."""
    max_atoms: int = 50_000
    """Size cap; the build stops reading once it is reached."""
    seed_atoms: int | None = None
    """Activations sampled from the first batch as initial atoms (default: target_l0)."""
    dedup_cosine: float | None = None
    """Drop candidates whose |cosine| with a kept atom exceeds this (None: no de-duplication)."""
    normalization: Literal["none", "mean", "mean_std"] = "mean"
    """Statistics from the first batch, folded into the saved weights. ``mean`` (default) and
    ``none`` export exactly to sae_lens's matching pursuit; ``mean_std`` (per-dimension std)
    only approximately."""
    encoder: Literal["mp", "gp"] = "mp"
    """Pursuit used while building and by the finished dictionary."""
    nonnegative: bool = False
    """Non-negative pursuit coefficients."""
    candidates: int | None = None
    """Screen each token to its top-``candidates`` atoms before pursuing (approximate)."""
    seed: int = 0
    """Seed of the first-batch sample."""

    def __post_init__(self) -> None:
        if not 0.0 < self.loss_threshold <= 1.0:
            raise ValueError(f"loss_threshold must be in (0, 1], got {self.loss_threshold}")
        if self.target_l0 < 1:
            raise ValueError(f"target_l0 must be >= 1, got {self.target_l0}")
        if self.target_l0 > self.max_atoms:
            raise ValueError(
                f"target_l0={self.target_l0} is larger than the dictionary "
                f"(max_atoms={self.max_atoms})"
            )
        if self.seed_atoms is None:
            self.seed_atoms = self.target_l0
        if not 1 <= self.seed_atoms <= self.max_atoms:
            raise ValueError(f"seed_atoms must be in [1, max_atoms], got {self.seed_atoms}")
        if self.dedup_cosine is not None and not 0.0 < self.dedup_cosine < 1.0:
            raise ValueError(f"dedup_cosine must be in (0, 1), got {self.dedup_cosine}")
        if self.encoder not in ("mp", "gp"):
            raise ValueError(f"encoder must be 'mp' or 'gp', got {self.encoder!r}")
