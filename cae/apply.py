"""Applying steering vectors: add ``multiplier * v_L`` to the output of decoder block L.

CAA (Rimsky et al. 2024) adds the vector "at all token positions after the end of the
instruction", including every generated token. With a key-value cache, generation runs a
prompt forward over the whole prompt and then one-token forwards, so the positions are
decided per forward from facts every supported transformers version provides at the model's
entry (:func:`forward_facts`): how many tokens the cache already holds (``cache_position``,
else the cache object's ``get_seq_length()`` whether it is passed as ``past_key_values``,
``cache`` or positionally, else the 2-D attention mask's length minus the input length) and
the 2-D attention mask (which columns are real tokens). A forward is a *decoding step* when
the cache is non-empty and it reads one token; any other forward reads *prompt* tokens: the
prefill, and also a multi-token forward on a non-empty cache (a second chat turn, a prompt
continuation).

- ``all``: every position of every forward;
- ``from_prompt_end``: in a prompt forward, the last real token of each row (left or right
  padding; in a continuation, the last token of the new chunk); every decoding step;
- ``generated``: only the decoding steps (the tokens generated so far are re-read as
  inputs); a prompt forward, continuation included, has none.

At the chosen positions an operator (:mod:`cae.operators`: ``add``, the default, ``ablate``,
``ablate_then_add``, ``norm_preserving`` or a callable) turns the activation and
``multiplier * v_L`` into the new activation; a vector trained at another site
(``meta.site``: ``block``, ``attn``, ``mlp``) steers that site's output.

Two forms share ``position_mask`` and the operator:

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

import inspect
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from cae.model import (
    block_output,
    decoder_layers,
    hf_module,
    hidden_size,
    is_hooked_transformer,
    model_id,
    site_module,
    site_path,
    submodule,
)
from cae.names import POSITIONS
from cae.operators import Operator, checked
from cae.operators import add as plain_add
from cae.operators import operator as find_operator

if TYPE_CHECKING:
    from cae.vector import SteeringVector


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


def resolve_operator(name_or_fn: str | Operator) -> Operator:
    """:func:`cae.operators.operator` (an unknown name is a one-line ValueError)."""
    return find_operator(name_or_fn)


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
    for layer in sv.vectors:
        site_path(model, layer, sv.meta.site)  # a site the architecture lacks: one line


@dataclass(frozen=True)
class ForwardFacts:
    """What a forward's inputs say about where it sits in a generation.

    Attributes:
        past: tokens the key-value cache held before this forward (0 without a cache).
        mask_BS: the 2-D attention mask over cached and new tokens, or None.
    """

    past: int = 0
    mask_BS: Tensor | None = None

    def decoding_step(self, n_tokens: int) -> bool:
        """A one-token forward on a non-empty cache; anything else reads prompt tokens."""
        return self.past > 0 and n_tokens == 1


_CACHE_NAMES = ("cache", "past_key_values")  # transformers >= 5.24 / earlier 5.x
_INPUT_NAMES = ("input_ids", "inputs_embeds")


def _bound(module: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The forward's arguments by name, positional ones included."""
    if not args:
        return dict(kwargs)
    try:
        bound = inspect.signature(module.forward).bind_partial(*args, **kwargs)
    except TypeError:
        return dict(kwargs)
    named = dict(bound.arguments)
    named.update(named.pop("kwargs", None) or {})
    return named


def _past_length(named: dict[str, Any], n_new: int | None, mask_BS: Tensor | None) -> int:
    position = named.get("cache_position")
    if isinstance(position, Tensor) and position.numel():
        return int(position.reshape(-1)[0])
    for name in _CACHE_NAMES:
        cache = named.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    entry = named.get("past_kv_cache_entry")  # TransformerLens, read at its first block
    if entry is not None and hasattr(entry, "past_keys"):
        return int(entry.past_keys.shape[1])
    if mask_BS is not None and n_new is not None:
        return max(int(mask_BS.shape[1]) - n_new, 0)
    return 0


def forward_facts(module: Any, args: tuple, kwargs: dict) -> ForwardFacts:
    """Read :class:`ForwardFacts` from the arguments of a causal LM's ``forward``.

    Example:
        >>> import torch
        >>> from cae.organism import load
        >>> hf, _ = load("tiny")
        >>> forward_facts(hf, (torch.tensor([[5, 6, 7]]),), {}).past
        0
    """
    named = _bound(module, args, kwargs)
    mask = named.get("attention_mask")
    mask_BS = mask if isinstance(mask, Tensor) and mask.ndim == 2 else None
    inputs = next((named[n] for n in _INPUT_NAMES if isinstance(named.get(n), Tensor)), None)
    n_new = int(inputs.shape[1]) if inputs is not None and inputs.ndim >= 2 else None
    return ForwardFacts(_past_length(named, n_new, mask_BS), mask_BS)


def position_mask(
    positions: str, facts: ForwardFacts, n_tokens: int, batch: int,
    device: torch.device | str | None = None,
) -> Bool[Tensor, "B T"] | None:
    """Where to add in this forward (on ``device``, default the mask's or the CPU); None
    means everywhere (the cheap broadcast)."""
    if positions == "all" or (facts.decoding_step(n_tokens) and positions != "all"):
        return None
    if device is None:
        device = facts.mask_BS.device if facts.mask_BS is not None else "cpu"
    out_BT = torch.zeros(batch, n_tokens, dtype=torch.bool, device=device)
    if positions == "generated":
        return out_BT
    if facts.mask_BS is None:
        out_BT[:, -1] = True
        return out_BT
    real_BT = facts.mask_BS[:, -n_tokens:].to(device=device, dtype=torch.bool)
    last_B = n_tokens - 1 - real_BT.flip(-1).to(torch.int8).argmax(-1)
    out_BT[torch.arange(batch, device=device), last_B] = True
    return out_BT


def added(
    hidden_BTD: Float[Tensor, "B T D"], vec_D: Float[Tensor, " D"], where_BT: Tensor | None
) -> Float[Tensor, "B T D"]:
    """``hidden + vec`` at the chosen positions (a new tensor)."""
    vec_D = vec_D.to(device=hidden_BTD.device, dtype=hidden_BTD.dtype)
    if where_BT is None:
        return hidden_BTD + vec_D
    return hidden_BTD + where_BT.to(hidden_BTD.device).unsqueeze(-1) * vec_D


def applied(
    op: Operator, hidden_BTD: Float[Tensor, "B T D"], vec_D: Float[Tensor, " D"],
    where_BT: Tensor | None,
) -> Float[Tensor, "B T D"]:
    """``op(hidden, vec)`` at the chosen positions, ``hidden`` elsewhere (a new tensor);
    plain addition is :func:`added` (exactly ``hidden + where * vec``)."""
    if op is plain_add:
        return added(hidden_BTD, vec_D, where_BT)
    vec_D = vec_D.to(device=hidden_BTD.device, dtype=hidden_BTD.dtype)
    new_BTD = checked(op, hidden_BTD, vec_D)
    if where_BT is None:
        return new_BTD
    return torch.where(where_BT.to(hidden_BTD.device).unsqueeze(-1), new_BTD, hidden_BTD)


def on_block_device(block: torch.nn.Module, vec_D: Tensor) -> Tensor:
    """``vec_D`` moved once to the device and dtype of ``block``'s weights (the steering hook
    then adds it without a copy per forward)."""
    param = next(block.parameters(), None)
    return vec_D if param is None else vec_D.to(device=param.device, dtype=param.dtype)


Target = tuple[int, str]
"""(layer, site) of a steered module; sorted, targets follow the order the model runs them."""


def combined(
    steers: Sequence[tuple[SteeringVector, float]], model: Any, force: bool
) -> dict[Target, Tensor]:
    """Sum of ``multiplier * v_L`` per (layer, site) over several vectors (checked), in the
    order the model computes them (attention, MLP, then the block's output)."""
    total: dict[Target, Tensor] = {}
    for sv, multiplier in steers:
        m = check_multiplier(multiplier)
        check_compatible(sv, model, force)
        for layer, vec_D in sv.vectors.items():
            key = (layer, sv.meta.site)
            total[key] = total.get(key, 0) + m * vec_D.float()
    check_overflow(total, steers, model)
    order = {site: i for i, site in enumerate(("attn", "mlp", "block"))}
    return dict(sorted(total.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])))


def check_overflow(total: dict[Target, Tensor], steers: Sequence[tuple[SteeringVector, float]],
                   model: Any) -> None:
    """Refuse a steering sum the model's activations cannot hold: an entry beyond its dtype's
    range, or one whose square summed over the width overflows float32 in the next RMS norm
    (``cae generate --multiplier 1e38`` would generate empty text)."""
    params = next(iter(hf_module(model).parameters()), None)
    dtype = params.dtype if params is not None and params.dtype.is_floating_point else torch.float32
    for (layer, site), vec_D in total.items():
        largest = float(vec_D.abs().max()) if vec_D.numel() else 0.0
        limit = min(torch.finfo(dtype).max, math.sqrt(torch.finfo(torch.float32).max / vec_D.numel()))
        if not math.isfinite(largest) or largest > limit:
            multipliers = ", ".join(f"{m:g}" for _, m in steers)
            raise ValueError(
                f"multiplier {multipliers} makes the steering entries at layer {layer} ({site}) reach "
                f"{largest:.3g}, which would overflow the model's {str(dtype).removeprefix('torch.')} "
                f"activations (limit {limit:.3g}): use a smaller multiplier")


@contextmanager
def steering(
    model: Any,
    steers: Sequence[tuple[SteeringVector, float]],
    positions: str = "from_prompt_end",
    force: bool = False,
    operator: str | Operator = "add",
) -> Iterator[None]:
    """Steer every forward of ``model`` inside the block with several (vector, multiplier).

    ``operator``: ``add`` (default), ``ablate``, ``ablate_then_add``, ``norm_preserving`` or
    a callable ``(hidden_BTD, vec_D) -> hidden_BTD`` (:mod:`cae.operators`), applied per
    (layer, site) to the sum of ``multiplier * v`` at the positions of ``positions``.

    Example:
        >>> from cae.organism import load
        >>> from cae import SteeringVector
        >>> hf, tok = load("tiny")
        >>> sv = SteeringVector.random(hf, layers=[1], seed=0)
        >>> with steering(hf, [(sv, 2.0)], positions="all"):
        ...     out = hf.generate(**tok("story :", return_tensors="pt"), max_new_tokens=3)
    """
    check_positions(positions)
    op = resolve_operator(operator)
    vectors = combined(steers, model, force)
    module = hf_module(model)
    facts = [ForwardFacts()]  # of the forward in progress

    def on_entry(mod: Any, args: tuple, kwargs: dict) -> None:
        facts[0] = forward_facts(mod, args, kwargs)

    def on_output(vec_D: Tensor):
        def hook(_mod: Any, _args: tuple, output: Any) -> Any:
            hidden_BTD = block_output(output)
            where = position_mask(positions, facts[0], hidden_BTD.shape[1], hidden_BTD.shape[0],
                                  hidden_BTD.device)
            new = applied(op, hidden_BTD, vec_D, where)
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook

    targets = {key: site_module(model, *key) for key in vectors}
    # TransformerLens' generate calls forward() directly (no module hooks) and passes the
    # cache to each block: its facts are read where block 0 is entered
    entry = decoder_layers(model)[1][0] if is_hooked_transformer(module) else module
    handles = [entry.register_forward_pre_hook(on_entry, with_kwargs=True)]
    handles += [targets[key].register_forward_hook(on_output(on_block_device(targets[key], v)))
                for key, v in vectors.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


PREFILL_ONLY = (
    "steer() ran in the prompt forward of a generate() and the block has no tracer.iter / "
    "tracer.all() loop, so only the prompt is steered, not the generated tokens; call it in "
    "`for step in tracer.iter[:]:` (or use `with sv.apply(model, m):` around the generation)"
)


def generation_prefill(kwargs: dict, facts: ForwardFacts) -> bool:
    """Whether this is the prompt forward of ``transformers``' ``generate`` (its first
    forward passes ``logits_to_keep`` and an empty cache; a plain trace passes neither)."""
    return facts.past == 0 and "logits_to_keep" in kwargs


def in_step_loop() -> bool:
    """Whether the running nnsight block loops over generation steps (``tracer.iter`` or
    ``tracer.all()`` among the names its code uses)."""
    from nnsight.intervention.interleaver import Mediator

    names = getattr(getattr(Mediator.current("steer"), "code", None), "co_names", ())
    return "iter" in names or "all" in names


def steer(
    model: Any,
    sv: SteeringVector | Sequence[tuple[SteeringVector, float]],
    multiplier: float = 1.0,
    positions: str = "from_prompt_end",
    force: bool = False,
    operator: str | Operator = "add",
) -> None:
    """Add steering inside the caller's nnsight ``trace`` or per generation step.

    Call it first in the trace (or first in each ``for step in tracer.iter[:]`` of a
    ``generate``), before any other read of the model: it reads the model's inputs to
    tell prompt forwards from one-token decoding steps. ``sv`` may be a list of (vector,
    multiplier); ``operator`` is as in :func:`steering`. Called once in a ``generate``
    block without such a loop it steers only the prompt forward, and warns so.

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
    op = resolve_operator(operator)
    steers: Sequence[tuple[SteeringVector, float]] = (
        sv if isinstance(sv, (list, tuple)) else [(sv, multiplier)]  # type: ignore[list-item]
    )
    vectors = combined(steers, model, force)
    args, kwargs = model.inputs
    facts = forward_facts(hf_module(model), tuple(args), dict(kwargs))
    if generation_prefill(kwargs, facts) and not in_step_loop():
        warnings.warn(PREFILL_ONLY, UserWarning, stacklevel=2)
    for (layer, site), vec_D in vectors.items():
        out = submodule(model, site_path(model, layer, site)).output
        hidden_BTD = block_output(out)
        where = position_mask(positions, facts, hidden_BTD.shape[1], hidden_BTD.shape[0],
                              hidden_BTD.device)
        hidden_BTD[:] = applied(op, hidden_BTD, vec_D, where)
