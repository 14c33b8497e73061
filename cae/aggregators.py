"""Aggregators: from per-pair activations to one steering direction per layer.

Mean difference is CAA's definition (Rimsky et al. 2024) and the default; the PCA of the
differences (``repeng``, Zou et al. 2023) and a logistic-regression direction follow the
``steering-vectors`` library (Tan et al. 2024). Each is a small function
``(pos_ND, neg_ND) -> vec_D``. Legend: N pairs, D model width.

Lengths are comparable: ``pca`` and ``logistic`` find a *direction* (steering-vectors returns
it with norm 1), which is then rescaled to the length of the mean difference, so the same
multiplier adds a vector of the same length whatever the aggregator; only the direction
differs. (Scaling a direction by the mean difference's *projection* onto it, as this module
once did, shrinks it whenever the direction is far from the mean: on the organism the first
principal direction of the differences is the answer-letter direction, nearly orthogonal to
the mean difference, and came out ~100x shorter.)

Example: every aggregator of :data:`AGGREGATORS` on two pairs whose difference is ``e_0``:

    >>> import torch
    >>> pos_ND, neg_ND = torch.eye(3)[:2] + torch.eye(3)[0], torch.eye(3)[:2]
    >>> sorted(AGGREGATORS), AGGREGATORS["mean"](pos_ND, neg_ND).tolist()
    (['logistic', 'mean', 'pca'], [1.0, 0.0, 0.0])
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


def mean_diff_length(direction_D: Tensor, pos_ND: Tensor, neg_ND: Tensor) -> Float[Tensor, " D"]:
    """A unit ``direction_D`` rescaled to the length of the mean difference (the common scale
    of every aggregator)."""
    length = (pos_ND - neg_ND).double().mean(dim=0).norm()
    return (direction_D.double() * length).to(pos_ND.dtype)


def pca(pos_ND: Float[Tensor, "N D"], neg_ND: Float[Tensor, "N D"]) -> Float[Tensor, " D"]:
    """First principal direction of the uncentred differences (steering-vectors'
    ``pca_aggregator``: the PCA of the differences and their negatives), signed so the
    differences project positively on average, at the mean difference's length."""
    diff_ND = (pos_ND - neg_ND).double()
    _, _, vh = torch.linalg.svd(diff_ND, full_matrices=False)
    direction_D = vh[0]
    if (diff_ND @ direction_D).mean() < 0:
        direction_D = -direction_D
    return mean_diff_length(direction_D, pos_ND, neg_ND)


def logistic(
    pos_ND: Float[Tensor, "N D"], neg_ND: Float[Tensor, "N D"], steps: int = 200, l2: float = 1e-3
) -> Float[Tensor, " D"]:
    """Weight direction of an L2-regularised logistic regression separating positive from
    negative activations (full-batch L-BFGS, standardised features), at the mean difference's
    length."""
    x_MD = torch.cat([pos_ND, neg_ND]).double()
    y_M = torch.cat([torch.ones(len(pos_ND), device=x_MD.device),
                     torch.zeros(len(neg_ND), device=x_MD.device)]).double()
    mu_D, sd_D = x_MD.mean(0), x_MD.std(0).clamp_min(1e-6)
    z_MD = (x_MD - mu_D) / sd_D
    w_D = torch.zeros(x_MD.shape[1], dtype=torch.float64, device=x_MD.device, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, device=x_MD.device, requires_grad=True)
    opt = torch.optim.LBFGS([w_D, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z_MD @ w_D + b, y_M)
        loss = loss + l2 * (w_D @ w_D)
        loss.backward()
        return loss

    opt.step(closure)
    direction_D = (w_D.detach() / sd_D)
    return mean_diff_length(direction_D / direction_D.norm().clamp_min(1e-12), pos_ND, neg_ND)


AGGREGATORS: dict[str, Aggregator] = {"mean": mean_diff, "pca": pca, "logistic": logistic}
"""Every aggregator by name (``aggregator=`` of ``SteeringVector.train``); the names are
:data:`cae.names.AggregatorName`, which the CLI offers without importing torch."""


def aggregator(name: str) -> Aggregator:
    """Look an aggregator up by name with a clear error."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; choose from {sorted(AGGREGATORS)}")
    return AGGREGATORS[name]
