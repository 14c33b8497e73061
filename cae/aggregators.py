"""Aggregators: from per-pair activations to one steering direction per layer.

Mean difference is CAA's definition (Rimsky et al. 2024) and the default; the PCA of the
differences (``repeng``, Zou et al. 2023) and a logistic-regression direction follow the
``steering-vectors`` library (Tan et al. 2024). Each is a small function
``(pos_ND, neg_ND) -> vec_D``. Legend: N pairs, D model width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

Aggregator = Callable[[Float[Tensor, "N D"], Float[Tensor, "N D"]], Float[Tensor, " D"]]


def mean_diff(pos_ND: Float[Tensor, "N D"], neg_ND: Float[Tensor, "N D"]) -> Float[Tensor, " D"]:
    """CAA: mean over pairs of (positive - negative)."""
    return (pos_ND - neg_ND).mean(dim=0)


def pca(pos_ND: Float[Tensor, "N D"], neg_ND: Float[Tensor, "N D"]) -> Float[Tensor, " D"]:
    """First principal direction of the uncentred differences, signed and scaled so its
    projection matches the mean difference's length along it."""
    diff_ND = (pos_ND - neg_ND).double()
    _, _, vh = torch.linalg.svd(diff_ND, full_matrices=False)
    direction_D = vh[0]
    mean_D = diff_ND.mean(dim=0)
    scale = mean_D @ direction_D
    if scale < 0:
        direction_D, scale = -direction_D, -scale
    return (direction_D * scale).to(pos_ND.dtype)


def logistic(
    pos_ND: Float[Tensor, "N D"], neg_ND: Float[Tensor, "N D"], steps: int = 200, l2: float = 1e-3
) -> Float[Tensor, " D"]:
    """Weight direction of an L2-regularised logistic regression separating positive from
    negative activations (full-batch L-BFGS), scaled to the mean difference's projection."""
    x_MD = torch.cat([pos_ND, neg_ND]).double()
    y_M = torch.cat([torch.ones(len(pos_ND)), torch.zeros(len(neg_ND))]).double()
    mu_D, sd_D = x_MD.mean(0), x_MD.std(0).clamp_min(1e-6)
    z_MD = (x_MD - mu_D) / sd_D
    w_D = torch.zeros(x_MD.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w_D, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z_MD @ w_D + b, y_M)
        loss = loss + l2 * (w_D @ w_D)
        loss.backward()
        return loss

    opt.step(closure)
    direction_D = (w_D.detach() / sd_D)
    direction_D = direction_D / direction_D.norm().clamp_min(1e-12)
    scale = (pos_ND - neg_ND).double().mean(0) @ direction_D
    return (direction_D * scale).to(pos_ND.dtype)


AGGREGATORS: dict[str, Aggregator] = {"mean": mean_diff, "pca": pca, "logistic": logistic}
"""Every aggregator by name (``aggregator=`` of ``SteeringVector.train``); the names are
:data:`cae.names.AggregatorName`, which the CLI offers without importing torch."""


def aggregator(name: str) -> Aggregator:
    """Look an aggregator up by name with a clear error."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; choose from {sorted(AGGREGATORS)}")
    return AGGREGATORS[name]
