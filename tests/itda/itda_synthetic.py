"""Synthetic activations for the ITDA tests: sparse combinations of planted directions."""

from __future__ import annotations

import torch


def planted(
    n: int, d: int = 24, n_features: int = 48, active: int = 3, seed: int = 0, noise: float = 0.01
) -> torch.Tensor:
    """Tokens = sparse positive combinations of planted unit directions + noise + offset."""
    gen = torch.Generator().manual_seed(seed)
    dirs_KD = torch.nn.functional.normalize(torch.randn(n_features, d, generator=gen), dim=1)
    idx_NA = torch.rand(n, n_features, generator=gen).argsort(dim=1)[:, :active]
    coef_NA = torch.exp(0.5 * torch.randn(n, active, generator=gen))
    x_ND = torch.einsum("na,nad->nd", coef_NA, dirs_KD[idx_NA])
    scale_D = torch.linspace(0.5, 2.0, d)
    return (x_ND + noise * torch.randn(n, d, generator=gen)) * scale_D + 0.3
