"""Activation normalisation before SAE training, as in Shabalin et al. 2025 (arXiv 2505.24360).

The paper's key finding on Flux: without normalisation >99% of TopK latents die (the variance sits in
a few dozen principal directions); with PCA whitening estimated from the first batch fewer than 30%
die, and per-dimension standardisation does about as well. Every normalisation here is an affine map
``z = (x - mean) @ M`` held as sae_lens's own ``ActivationWhitening``, so ``SAETrainer`` applies it
to every batch and ``TrainingSAE.fold_activation_whitening`` folds it into the weights at the end:
the saved SAE reads and reconstructs RAW activations, for any plain sae_lens user.

Legend: N tokens, D model width.

Example:
    >>> whitening = estimate("whiten", acts_ND)      # None for "none"  # doctest: +SKIP
    >>> z_ND = (acts_ND - whitening.mean) @ whitening.matrix  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from sae_lens.training.activation_scaler import ActivationWhitening
from torch import Tensor

from sae_flux.train_config import NORMALIZATIONS


def estimate(
    kind: str, acts_ND: Float[Tensor, "n d"], eps: float = 1e-4
) -> ActivationWhitening | None:
    """The affine normalisation ``kind`` estimated from ``acts_ND`` (``None`` for ``"none"``).

    ``standardize`` divides each dimension by its standard deviation; ``whiten`` is PCA whitening
    (``M = E diag(lambda + eps')^-1/2``). ``eps`` is relative: ``eps' = eps * mean(lambda)`` (and
    ``eps * mean(std)`` for standardisation), so constant or near-constant directions stay finite.
    Statistics are kept in float64 so that folding them into the weights is exact.
    """
    if kind not in NORMALIZATIONS:
        raise ValueError(f"normalisation {kind!r} is not one of {NORMALIZATIONS}")
    if kind == "none":
        return None
    if acts_ND.shape[0] < 2:
        raise ValueError(f"normalisation {kind!r} needs at least 2 tokens, got {acts_ND.shape[0]}")
    acts_ND = acts_ND.to(torch.float64)
    mean_D = acts_ND.mean(0)
    if kind == "standardize":
        std_D = acts_ND.std(0)
        std_D = std_D + eps * std_D.mean().clamp(min=1e-12)
        return ActivationWhitening(mean_D, torch.diag(1 / std_D), torch.diag(std_D))
    centred_ND = acts_ND - mean_D
    cov_DD = centred_ND.T @ centred_ND / (acts_ND.shape[0] - 1)
    eigenvalues_D, eigenvectors_DD = torch.linalg.eigh(cov_DD)
    eigenvalues_D = eigenvalues_D.clamp(min=0)
    eigenvalues_D = eigenvalues_D + eps * eigenvalues_D.mean().clamp(min=1e-12)
    return ActivationWhitening(
        mean=mean_D,
        matrix=(eigenvectors_DD * eigenvalues_D.rsqrt()).contiguous(),
        inverse_matrix=(eigenvalues_D.sqrt()[:, None] * eigenvectors_DD.T).contiguous(),
    )


def apply(whitening: ActivationWhitening | None, acts_ND: Float[Tensor, "n d"]) -> Tensor:
    """``(acts - mean) @ M`` in the dtype of ``acts_ND`` (identity for ``None``)."""
    if whitening is None:
        return acts_ND
    mean_D = whitening.mean.to(acts_ND.device, acts_ND.dtype)
    return (acts_ND - mean_D) @ whitening.matrix.to(acts_ND.device, acts_ND.dtype)
