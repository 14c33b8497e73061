"""Steering operators: how a vector changes the activation at a steered position.

CAA (Rimsky et al. 2024) adds the vector. steering-vectors (``steering_operators.py``) also
offers directional ablation (Arditi et al. 2024, "Refusal is mediated by a single
direction": remove the component along the direction) and ablation followed by addition;
norm-preserving addition keeps each token's activation norm (the residual-norm control used
by several steering papers). An operator here maps the activation and the vector to the
new activation; ``cae.apply`` calls it only at the positions its position rule picks.

``vec_D`` is what the caller asked to add: ``multiplier * v`` (summed over several vectors
on the same layer and site). So ``ablate`` removes the component along ``vec_D``'s
direction, whatever its length or sign (a zero vector removes nothing), and
``ablate_then_add`` removes it and then adds ``vec_D``.

A user operator is any callable ``(hidden_BTD, vec_D) -> new hidden_BTD`` of the same shape.
Legend: B rows, T tokens, D width.

Example:
    >>> import torch
    >>> h = torch.tensor([[[3.0, 4.0]]])
    >>> v = torch.tensor([1.0, 0.0])
    >>> OPERATORS["ablate"](h, v).tolist(), OPERATORS["ablate_then_add"](h, 2 * v).tolist()
    ([[[0.0, 4.0]]], [[[2.0, 4.0]]])
    >>> OPERATORS["norm_preserving"](h, v).norm().item()
    5.0
"""

from __future__ import annotations

from collections.abc import Callable

from jaxtyping import Float
from torch import Tensor

Operator = Callable[[Tensor, Tensor], Tensor]
"""``(hidden_BTD, vec_D) -> new hidden_BTD``."""


def add(hidden_BTD: Float[Tensor, "B T D"], vec_D: Float[Tensor, " D"]) -> Tensor:
    """``hidden + vec`` (CAA; the default)."""
    return hidden_BTD + vec_D


def ablate(hidden_BTD: Float[Tensor, "B T D"], vec_D: Float[Tensor, " D"]) -> Tensor:
    """``hidden - (hidden . u) u`` with ``u = vec / |vec|``: the component along the
    direction removed (unchanged if ``vec`` is zero)."""
    norm = vec_D.norm()
    if float(norm) == 0.0:
        return hidden_BTD
    unit_D = vec_D / norm
    return hidden_BTD - (hidden_BTD @ unit_D).unsqueeze(-1) * unit_D


def ablate_then_add(hidden_BTD: Float[Tensor, "B T D"], vec_D: Float[Tensor, " D"]) -> Tensor:
    """:func:`ablate`, then :func:`add`: the component along the direction set to ``vec``."""
    return ablate(hidden_BTD, vec_D) + vec_D


def norm_preserving(hidden_BTD: Float[Tensor, "B T D"], vec_D: Float[Tensor, " D"]) -> Tensor:
    """``hidden + vec`` rescaled, per token, to the norm ``hidden`` had."""
    new_BTD = hidden_BTD + vec_D
    scale_BT1 = hidden_BTD.norm(dim=-1, keepdim=True) / new_BTD.norm(dim=-1, keepdim=True)
    return new_BTD * scale_BT1.nan_to_num(0.0, 0.0, 0.0)


OPERATORS: dict[str, Operator] = {
    "add": add,
    "ablate": ablate,
    "ablate_then_add": ablate_then_add,
    "norm_preserving": norm_preserving,
}
"""Every named operator (keys are :data:`cae.names.OPERATOR_NAMES`, in that order; tested)."""


def operator(name_or_fn: str | Operator) -> Operator:
    """The operator called ``name_or_fn``, or the callable itself; an unknown name is a
    ValueError in one line."""
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in OPERATORS:
        raise ValueError(f"unknown operator {name_or_fn!r}; choose from {list(OPERATORS)} or pass "
                         "a callable (hidden_BTD, vec_D) -> hidden_BTD")
    return OPERATORS[name_or_fn]


def checked(op: Operator, hidden_BTD: Tensor, vec_D: Tensor) -> Tensor:
    """``op(hidden, vec)``, refused in one line if it changes the shape (a user operator)."""
    new_BTD = op(hidden_BTD, vec_D)
    if not isinstance(new_BTD, Tensor) or new_BTD.shape != hidden_BTD.shape:
        shape = tuple(new_BTD.shape) if isinstance(new_BTD, Tensor) else type(new_BTD).__name__
        raise ValueError(f"operator {getattr(op, '__name__', op)!r} returned {shape} for an "
                         f"activation of shape {tuple(hidden_BTD.shape)}; it must keep the shape")
    return new_BTD
