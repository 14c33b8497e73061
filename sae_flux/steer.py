"""Steering Flux with dictionary features: activation addition, clamping and ablation.

Implements the steering of Shabalin et al. 2025 (arXiv 2505.24360, section "steering"): add a
dictionary feature's decoder row, mapped back to raw residual space and unit-normalised, to the
image stream of a block, on a region of the token grid and on the first steps only (the paper:
scale ~0.8 x the mean token norm, the first 5 of 7 steps, block 18). Also clamping a feature to
a value and ablating it, both as the dictionary encodes it (the error term is kept, as sae_lens's
``use_error_term=True``).

Every edit is a pure function of the unedited stream, :func:`apply_edits`; it runs three ways,
all through the one stream editor of :mod:`sae_flux.hooks` (so a ``.delta`` hook edits the
block's update, and a relative scale is measured on it, on every path):

- :func:`steering`: a context manager around any ``Flux`` call (:func:`sae_flux.hooks.editing`,
  a plain torch forward hook: a bare pipeline call has no nnsight trace to put an intervention in);
- :func:`steer_trace`: inside your own ``with flux.model.generate(...)`` block (nnsight,
  :func:`sae_flux.hooks.edit`);
- ``sae-flux steer``: a grid PNG of prompts x scales (:mod:`sae_flux.steering.grid`).

Saved dictionaries of this project hold raw-space decoders: ``sae_flux.train`` folds the
normalisation into the weights (``fold_activation_whitening``: ``W_dec <- W_dec M^-1``) and an
ITDA keeps ``W_dec = atom * act_std``, so a decoder row is the raw-space direction.

Legend: B batch, T image tokens, D model width, F dictionary features, h/w token rows/cols.

Example:
    >>> flux = Flux.tiny()                                              # doctest: +SKIP
    >>> sae = SAE.load_from_disk("dictionaries/sae-topk")               # doctest: +SKIP
    >>> edit = add_feature(sae, 12, scale=0.8, relative=True,           # doctest: +SKIP
    ...                    steps=range(5), region=(0, 0, 4, 4))
    >>> with steering(flux, "double.1.img", [edit]):                    # doctest: +SKIP
    ...     images = flux.generate(["a red circle at the left"])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from sae_flux import hooks as hookpoints

logger = logging.getLogger(__name__)

Mode = Literal["add", "clamp"]
#: A box ``(row0, col0, row1, col1)`` on the token grid (end exclusive), a boolean (h, w) mask, or
#: a boolean (B, h, w) mask with one region per image of the batch.
Region = tuple[int, int, int, int] | Tensor | None
#: sae_lens normalisations that leave a decoder row a raw-space direction (up to a scalar).
_DIRECTION_SAFE_NORMS = ("none", None, "expected_average_only_in", "constant_norm_rescale", "layer_norm")


@dataclass(frozen=True)
class Edit:
    """One edit of a stream: add ``scale * direction`` or clamp a dictionary feature.

    Build it with :func:`add`, :func:`add_feature`, :func:`clamp` or :func:`ablate`.
    """

    mode: Mode
    direction_D: Tensor
    """Unit direction (``add``) or the feature's raw decoder row (``clamp``)."""
    scale: float = 0.0
    """``add``: absolute norm of the addition, or a multiple of the mean token norm (``relative``)."""
    relative: bool = False
    """Scale relative to the mean image-token norm of the unedited stream (per image and step)."""
    region: Region = None
    """Tokens edited: a box or an (h, w) mask on the token grid; ``None`` = every image token."""
    steps: tuple[int, ...] | None = None
    """Denoising steps edited (0-based); ``None`` = every step."""
    dictionary: Any = None
    """``clamp``: the sae_lens SAE whose encoding is clamped."""
    feature: int | None = None
    """``clamp``: the feature index."""
    value: float = 0.0
    """``clamp``: the value the feature is set to (0 = ablation)."""

    def __post_init__(self) -> None:
        for name in ("scale", "value"):
            number = getattr(self, name)
            if not math.isfinite(number):
                raise ValueError(f"steering {name} must be a finite number, got {number}")
        if self.direction_D.ndim != 1 or not torch.isfinite(self.direction_D).all():
            raise ValueError(f"a steering direction must be a finite vector (D,), got shape {tuple(self.direction_D.shape)}")
        if self.steps is not None and any(s < 0 for s in self.steps):
            raise ValueError(f"steps must be >= 0, got {list(self.steps)}")
        if self.region is not None:
            _check_region_form(self.region)

    def applies_at(self, step: int) -> bool:
        return self.steps is None or step in self.steps


def _check_region_form(region: Region) -> None:
    if region is None:
        return
    if isinstance(region, Tensor):
        if region.dtype != torch.bool or region.ndim not in (2, 3):
            raise ValueError(
                f"a region mask must be a boolean (h, w) or (batch, h, w) tensor, got {region.dtype} {tuple(region.shape)}"
            )
        return
    if len(region) != 4 or not all(isinstance(v, int) for v in region):
        raise ValueError(f"a region box must be four ints (row0, col0, row1, col1), got {region!r}")
    r0, c0, r1, c1 = region
    if not (0 <= r0 < r1 and 0 <= c0 < c1):
        raise ValueError(f"region box {region!r} must satisfy 0 <= row0 < row1 and 0 <= col0 < col1")


def token_mask(region: Region, grid: tuple[int, int]) -> Bool[Tensor, "*B T"]:
    """The region as a flat mask over the ``h*w`` image tokens (row-major, as Flux packs them).

    A (B, h, w) mask gives a (B, T) mask; everything else a (T,) mask.
    """
    rows, cols = grid
    if region is None:
        return torch.ones(rows * cols, dtype=torch.bool)
    if isinstance(region, Tensor):
        if tuple(region.shape[-2:]) != (rows, cols):
            raise ValueError(f"region mask of shape {tuple(region.shape)} does not match the token grid {grid}")
        return region.flatten(-2).cpu()
    r0, c0, r1, c1 = region
    if r1 > rows or c1 > cols:
        raise ValueError(
            f"region box {region!r} lies outside the token grid of {rows} rows x {cols} cols "
            f"(rows 0..{rows}, cols 0..{cols}, end exclusive)"
        )
    mask_hw = torch.zeros(rows, cols, dtype=torch.bool)
    mask_hw[r0:r1, c0:c1] = True
    return mask_hw.reshape(-1)


# -- directions -------------------------------------------------------------------------------


def check_dictionary(dictionary: Any, hook: str | None = None, width: int | None = None) -> None:
    """Refuse a dictionary trained on another hook point or width than the stream it steers."""
    trained_on = getattr(getattr(dictionary.cfg, "metadata", None), "hook_name", None)
    if hook is not None and trained_on and trained_on != hook:
        raise ValueError(f"dictionary was trained on hook {trained_on!r}, not on the steered stream {hook!r}")
    if width is not None and dictionary.cfg.d_in != width:
        raise ValueError(f"dictionary width d_in={dictionary.cfg.d_in} does not match the stream width {width} of {hook!r}")


def decoder_row(dictionary: Any, feature: int) -> Float[Tensor, " D"]:
    """The raw-space decoder row of ``feature`` (float32, detached)."""
    d_sae = dictionary.cfg.d_sae
    if not 0 <= feature < d_sae:
        raise ValueError(f"feature {feature} is beyond the dictionary (d_sae={d_sae}: features 0..{d_sae - 1})")
    norm = getattr(dictionary.cfg, "normalize_activations", None)
    if norm not in _DIRECTION_SAFE_NORMS:
        raise ValueError(
            f"dictionary normalises activations with {norm!r} that is not folded into its weights; fold it "
            "first (sae.fold_activation_whitening) so a decoder row is a raw-space direction"
        )
    return dictionary.W_dec[feature].detach().float().cpu()


def feature_direction(dictionary: Any, feature: int) -> Float[Tensor, " D"]:
    """The unit raw-space direction of a dictionary feature (its decoder row, normalised)."""
    row_D = decoder_row(dictionary, feature)
    norm = row_D.norm()
    if norm == 0:
        raise ValueError(f"feature {feature} has a zero decoder row: no direction to steer along")
    return row_D / norm


# -- edit constructors --------------------------------------------------------------------------


def _steps(steps: Iterable[int] | None) -> tuple[int, ...] | None:
    return None if steps is None else tuple(sorted({int(s) for s in steps}))


def add(
    direction: Tensor, scale: float, relative: bool = False, region: Region = None,
    steps: Iterable[int] | None = None, normalize: bool = True,
) -> Edit:
    """Add ``scale * direction`` (unit-normalised unless ``normalize=False``): any vector.

    Example:
        >>> edit = add(torch.randn(32), scale=0.8, relative=True, steps=range(5))
    """
    direction = direction.detach().float().cpu().reshape(-1)
    if normalize:
        norm = direction.norm()
        if not norm > 0:
            raise ValueError("cannot steer along a zero direction")
        direction = direction / norm
    return Edit("add", direction, float(scale), relative, region, _steps(steps))


def add_feature(
    dictionary: Any, feature: int, scale: float, relative: bool = False, region: Region = None,
    steps: Iterable[int] | None = None,
) -> Edit:
    """Add ``scale`` times the unit decoder direction of a dictionary feature."""
    edit = Edit("add", feature_direction(dictionary, feature), float(scale), relative, region, _steps(steps))
    return _with_owner(edit, dictionary, feature)


def _with_owner(edit: Edit, dictionary: Any, feature: int) -> Edit:
    object.__setattr__(edit, "dictionary", dictionary)
    object.__setattr__(edit, "feature", feature)
    return edit


def clamp(
    dictionary: Any, feature: int, value: float, region: Region = None, steps: Iterable[int] | None = None
) -> Edit:
    """Set the dictionary's encoding of ``feature`` to ``value``, keeping the reconstruction error.

    ``x' = decode(a with a_f = value) + (x - decode(a)) = x + (value - a_f) W_dec[f]``, the output of
    sae_lens's ``SAE(use_error_term=True)`` with ``hook_sae_acts_post`` clamped.
    """
    row_D = decoder_row(dictionary, feature)
    return Edit("clamp", row_D, 0.0, False, region, _steps(steps), dictionary, feature, float(value))


def ablate(dictionary: Any, feature: int, region: Region = None, steps: Iterable[int] | None = None) -> Edit:
    """Remove the feature's contribution as the dictionary encodes it (clamp to 0)."""
    return clamp(dictionary, feature, 0.0, region, steps)


# -- applying -----------------------------------------------------------------------------------


def mean_token_norm(acts_BTD: Float[Tensor, "B T D"]) -> Float[Tensor, " B"]:
    """Mean L2 norm of each image's tokens (the unit of a relative scale)."""
    return acts_BTD.float().norm(dim=-1).mean(-1)


def _encode_feature(dictionary: Any, acts_ND: Tensor, feature: int) -> Tensor:
    with torch.no_grad():
        param = dictionary.W_dec
        latents_NF = dictionary.encode(acts_ND.to(param.device, param.dtype))
    return latents_NF[:, feature].to(acts_ND.device, torch.float32)


def edit_delta(
    edit: Edit, acts_BTD: Float[Tensor, "B T D"], grid: tuple[int, int]
) -> Float[Tensor, "B T D"]:
    """What ``edit`` adds to the unedited stream ``acts_BTD`` (zero outside its region)."""
    b, t, d = acts_BTD.shape
    if edit.direction_D.shape[0] != d:
        raise ValueError(f"steering direction has width {edit.direction_D.shape[0]} but the stream has width {d}")
    mask_BT = _batch_mask(token_mask(edit.region, grid), b).to(acts_BTD.device)
    direction_D = edit.direction_D.to(acts_BTD.device, acts_BTD.dtype)
    if edit.mode == "add":
        scale_B = torch.full((b,), edit.scale, device=acts_BTD.device, dtype=acts_BTD.dtype)
        if edit.relative:
            scale_B = scale_B * mean_token_norm(acts_BTD).to(acts_BTD.dtype)
        delta_BTD = scale_B[:, None, None] * direction_D
        return delta_BTD.expand(b, t, d) * mask_BT[:, :, None]
    coef_N = torch.zeros(b * t, device=acts_BTD.device, dtype=torch.float32)
    keep_N = mask_BT.reshape(-1)
    coef_N[keep_N] = edit.value - _encode_feature(edit.dictionary, acts_BTD.reshape(-1, d)[keep_N], edit.feature)  # type: ignore[arg-type]
    return coef_N.reshape(b, t, 1).to(acts_BTD.dtype) * direction_D


def _batch_mask(mask: Tensor, batch: int) -> Bool[Tensor, "B T"]:
    if mask.ndim == 1:
        return mask[None, :].expand(batch, -1)
    if mask.shape[0] != batch:
        raise ValueError(f"a per-image region mask has {mask.shape[0]} images but the batch has {batch}")
    return mask


def apply_edits(
    acts_BTD: Float[Tensor, "B T D"], edits: Sequence[Edit], step: int, grid: tuple[int, int]
) -> Float[Tensor, "B T D"]:
    """The stream after every edit active at ``step``; untouched tokens keep their exact values.

    Deltas are computed from the unedited stream and summed, so several features compose
    independently of their order; tokens no edit touches are returned bit for bit.
    """
    if acts_BTD.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"stream has {acts_BTD.shape[1]} image tokens but the token grid {grid} has {grid[0] * grid[1]}")
    active = [e for e in edits if e.applies_at(step)]
    if not active:
        return acts_BTD
    b, t, _ = acts_BTD.shape
    touched_BT = torch.zeros(b, t, dtype=torch.bool)
    delta_BTD = torch.zeros_like(acts_BTD)
    for edit in active:
        delta_BTD = delta_BTD + edit_delta(edit, acts_BTD, grid)
        touched_BT |= _batch_mask(token_mask(edit.region, grid), b)
    touched = touched_BT.to(acts_BTD.device)[:, :, None]
    return torch.where(touched, acts_BTD + delta_BTD, acts_BTD)


@dataclass
class Steering:
    """Edits of one image stream: the hook point, the token grid and the edits."""

    hook: str
    edits: list[Edit]
    grid: tuple[int, int]
    steps_seen: list[int] = field(default_factory=list)
    """Denoising steps at which the stream was edited (filled while running)."""

    def __post_init__(self) -> None:
        point = hookpoints.parse(self.hook)
        if point.stream != "img":
            raise ValueError(f"steering edits an image stream (double.i.img / single.i.img), got {self.hook!r}")
        if not self.edits:
            raise ValueError("steering needs at least one edit")
        for edit in self.edits:
            token_mask(edit.region, self.grid)  # a region outside the grid fails here, before running
            if edit.dictionary is not None:
                check_dictionary(edit.dictionary, self.hook, edit.direction_D.shape[0])

    def check_steps(self, n_steps: int) -> None:
        """Refuse edits on steps the schedule does not have."""
        for edit in self.edits:
            bad = [s for s in edit.steps or () if s >= n_steps]
            if bad:
                raise ValueError(
                    f"steering step(s) {bad} are beyond the schedule of {n_steps} steps (0..{n_steps - 1})"
                )

    def apply(self, acts_BTD: Tensor, step: int) -> Tensor:
        self.steps_seen.append(step)
        return apply_edits(acts_BTD, self.edits, step, self.grid)


def make_steering(flux: Any, hook: str, edits: Sequence[Edit], height: int | None = None, width: int | None = None) -> Steering:
    """A :class:`Steering` of ``flux``'s stream ``hook``, checked against the model."""
    flux.resolve(hook)
    for edit in edits:
        if edit.direction_D.shape[0] != flux.width(hook):
            raise ValueError(
                f"steering direction has width {edit.direction_D.shape[0]} but {hook!r} has width {flux.width(hook)}"
            )
    return Steering(hook, list(edits), flux.grid(height, width))


def _current_step(scheduler: Any) -> int:
    index = getattr(scheduler, "step_index", None)
    return 0 if index is None else int(index)


@contextmanager
def steering(
    flux: Any, hook: str, edits: Sequence[Edit], height: int | None = None, width: int | None = None
) -> Iterator[Steering]:
    """Steer every ``flux`` pipeline call inside the block (a torch forward hook on the block).

    The denoising step is read from the scheduler (``step_index``), so true classifier-free
    guidance (two transformer calls per step) edits both calls of a step.

    Example:
        >>> from sae_flux.flux import Flux
        >>> flux = Flux.tiny()
        >>> edit = add(torch.randn(flux.d_model), scale=0.8, relative=True, steps=[0, 1])
        >>> with steering(flux, "double.1.img", [edit]):
        ...     images = flux.generate(["a red circle"])
    """
    plan = make_steering(flux, hook, edits, height, width)
    scheduler = flux.pipeline.scheduler

    def edit_stream(stream_BTD: Tensor) -> Tensor:
        plan.check_steps(len(scheduler.timesteps))
        return plan.apply(stream_BTD, _current_step(scheduler))

    with hookpoints.editing(flux.pipeline, hook, edit_stream):
        yield plan


def steer_trace(model: Any, plan: Steering, step: int, n_steps: int | None = None) -> None:
    """Edit ``plan.hook`` at denoising ``step`` inside your own nnsight trace of ``flux.model``.

    Example:
        >>> plan = make_steering(flux, "double.1.img", [edit])  # doctest: +SKIP
        >>> with flux.model.generate(["a red circle"],  # doctest: +SKIP
        ...                          **flux.generation_kwargs()) as tracer:
        ...     for step in tracer.iter[:]:
        ...         steer_trace(flux.model, plan, step)
    """
    if n_steps is not None:
        plan.check_steps(n_steps)
    hookpoints.edit(model, plan.hook, lambda stream_BTD: plan.apply(stream_BTD, step))
