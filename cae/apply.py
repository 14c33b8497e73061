"""Applying steering vectors: add ``multiplier * v_L`` to the output of decoder block L.

CAA (Rimsky et al. 2024) adds the vector "at all token positions after the end of the
instruction", including every generated token. With a key-value cache, generation runs a
prefill forward over the whole prompt and then one-token forwards, so the positions are
decided per forward from two facts read at the model's entry: whether the cache is empty
(prefill) and the 2-D attention mask (which columns are real tokens):

- ``all``: every position of every forward;
- ``from_prompt_end``: in the prefill, the last real token of each row (left or right
  padding); every later one-token step;
- ``generated``: only the one-token steps after the prefill (the tokens generated so far
  are re-read as inputs; a plain forward has none).

Two forms share ``position_mask``:

- ``steering(model, [(sv, m), ...], positions)`` (also ``sv.apply``): a context manager
  installing plain PyTorch forward hooks on the underlying ``transformers`` model. Any
  forward inside it is steered, including ``model.generate`` and nnsight traces (nnsight
  reports a steered block's ``.output`` before the addition; later blocks see it).
- ``steer(model, sv, m, positions)``: nnsight interventions, called inside the user's own
  ``with model.trace()`` (or per step of ``for step in tracer.iter[:]`` in
  ``model.generate``), before any other read of the model; it also runs on remote models.

Legend: B rows, T tokens of this forward, S tokens including the cache, D width.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from cae.model import block_output, decoder_layers, hf_module, hidden_size, model_id

if TYPE_CHECKING:
    from cae.vector import SteeringVector

POSITIONS = ("all", "from_prompt_end", "generated")


def check_multiplier(multiplier: float) -> float:
    """A finite float multiplier, or a ValueError."""
    value = float(multiplier)
    if not math.isfinite(value):
        raise ValueError(f"multiplier must be a finite number, got {multiplier!r}")
    return value


def check_positions(positions: str) -> str:
    """A known position rule, or a ValueError."""
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; choose from {list(POSITIONS)}")
    return positions


def check_compatible(sv: SteeringVector, model: Any, force: bool = False) -> None:
    """Refuse a vector trained on another model id or width (unless ``force``)."""
    width = hidden_size(model)
    if sv.meta.hidden_size != width:
        raise ValueError(
            f"vector width {sv.meta.hidden_size} does not match the model's hidden size {width}"
        )
    target = model_id(model)
    if not force and sv.meta.model_id and target and sv.meta.model_id != target:
        raise ValueError(
            f"vector was trained on {sv.meta.model_id!r} but the model is {target!r}; "
            "pass force=True to apply it anyway"
        )
    _, blocks = decoder_layers(model)
    bad = [layer for layer in sv.vectors if layer >= len(blocks)]
    if bad:
        raise ValueError(f"vector layers {bad} are outside the model's {len(blocks)} blocks")


def position_mask(
    positions: str, prefill: bool, n_tokens: int, mask_BS: Tensor | None, batch: int
) -> Bool[Tensor, "B T"] | None:
    """Where to add in this forward; None means everywhere (the cheap broadcast)."""
    if positions == "all" or (not prefill and positions in ("from_prompt_end", "generated")):
        return None
    out_BT = torch.zeros(batch, n_tokens, dtype=torch.bool)
    if positions == "generated":
        return out_BT
    if mask_BS is None:
        out_BT[:, -1] = True
        return out_BT
    real_BT = mask_BS[:, -n_tokens:].to(torch.bool)
    last_B = n_tokens - 1 - real_BT.flip(-1).to(torch.int8).argmax(-1)
    out_BT[torch.arange(batch), last_B] = True
    return out_BT


def added(
    hidden_BTD: Float[Tensor, "B T D"], vec_D: Float[Tensor, " D"], where_BT: Tensor | None
) -> Float[Tensor, "B T D"]:
    """``hidden + vec`` at the chosen positions (a new tensor)."""
    vec_D = vec_D.to(device=hidden_BTD.device, dtype=hidden_BTD.dtype)
    if where_BT is None:
        return hidden_BTD + vec_D
    return hidden_BTD + where_BT.to(hidden_BTD.device).unsqueeze(-1) * vec_D


def combined(
    steers: Sequence[tuple[SteeringVector, float]], model: Any, force: bool
) -> dict[int, Tensor]:
    """Sum of ``multiplier * v_L`` per layer over several vectors (checked)."""
    total: dict[int, Tensor] = {}
    for sv, multiplier in steers:
        m = check_multiplier(multiplier)
        check_compatible(sv, model, force)
        for layer, vec_D in sv.vectors.items():
            total[layer] = total.get(layer, 0) + m * vec_D.float()
    return total


@dataclass
class _ForwardState:
    """What the entry hook learned about the current forward."""

    prefill: bool = True
    mask_BS: Tensor | None = None
    calls: int = field(default=0)


def _is_prefill(kwargs: dict) -> bool:
    cache = kwargs.get("past_key_values")
    return cache is None or not hasattr(cache, "get_seq_length") or cache.get_seq_length() == 0


@contextmanager
def steering(
    model: Any,
    steers: Sequence[tuple[SteeringVector, float]],
    positions: str = "from_prompt_end",
    force: bool = False,
) -> Iterator[None]:
    """Steer every forward of ``model`` inside the block with several (vector, multiplier).

    Example:
        >>> from cae.organism import load
        >>> from cae import SteeringVector
        >>> hf, tok = load("tiny")
        >>> sv = SteeringVector.random(hf, layers=[1], seed=0)
        >>> with steering(hf, [(sv, 2.0)], positions="all"):
        ...     out = hf.generate(**tok("story :", return_tensors="pt"), max_new_tokens=3)
    """
    check_positions(positions)
    vectors = combined(steers, model, force)
    module = hf_module(model)
    _, blocks = decoder_layers(model)
    state = _ForwardState()

    def on_entry(_mod: Any, args: tuple, kwargs: dict) -> None:
        state.prefill = _is_prefill(kwargs)
        mask = kwargs.get("attention_mask")
        state.mask_BS = mask if isinstance(mask, Tensor) and mask.ndim == 2 else None

    def on_block(vec_D: Tensor):
        def hook(_mod: Any, _args: tuple, output: Any) -> Any:
            hidden_BTD = block_output(output)
            where = position_mask(positions, state.prefill, hidden_BTD.shape[1], state.mask_BS,
                                  hidden_BTD.shape[0])
            new = added(hidden_BTD, vec_D, where)
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook

    handles = [module.register_forward_pre_hook(on_entry, with_kwargs=True)]
    handles += [blocks[layer].register_forward_hook(on_block(v)) for layer, v in vectors.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def steer(
    model: Any,
    sv: SteeringVector | Sequence[tuple[SteeringVector, float]],
    multiplier: float = 1.0,
    positions: str = "from_prompt_end",
    force: bool = False,
) -> None:
    """Add steering inside the caller's nnsight ``trace`` or per generation step.

    Call it first in the trace (or first in each ``for step in tracer.iter[:]`` of a
    ``generate``), before any other read of the model: it reads the model's inputs to
    tell the prefill from one-token steps. ``sv`` may be a list of (vector, multiplier).

    Example:
        >>> from cae.organism import load
        >>> from cae.model import wrap
        >>> from cae import SteeringVector, steer
        >>> lm = wrap(*load("tiny"))
        >>> sv = SteeringVector.random(lm, layers=[1], seed=0)
        >>> with lm.generate("story :", max_new_tokens=3) as tracer:
        ...     for step in tracer.iter[:]:
        ...         steer(lm, sv, 2.0)
    """
    check_positions(positions)
    steers: Sequence[tuple[SteeringVector, float]] = (
        sv if isinstance(sv, (list, tuple)) else [(sv, multiplier)]  # type: ignore[list-item]
    )
    vectors = combined(steers, model, force)
    path, _ = decoder_layers(model)
    blocks = model
    for part in path.split("."):
        blocks = getattr(blocks, part)
    _, kwargs = model.inputs
    prefill = _is_prefill(kwargs)
    mask = kwargs.get("attention_mask")
    mask_BS = mask if isinstance(mask, Tensor) and mask.ndim == 2 else None
    for layer in sorted(vectors):
        out = blocks[layer].output
        hidden_BTD = block_output(out)
        where = position_mask(positions, prefill, hidden_BTD.shape[1], mask_BS, hidden_BTD.shape[0])
        hidden_BTD[:] = added(hidden_BTD, vectors[layer], where)
