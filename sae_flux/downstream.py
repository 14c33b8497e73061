"""Downstream fidelity of a dictionary on Flux: the diffusion analogue of "CE loss recovered".

For language-model SAEs the standard downstream check splices the reconstruction into the forward
pass and reports how much of the loss increase caused by ablating the site the SAE recovers.
Shabalin et al. 2025 (arXiv 2505.24360) report only FVU for their Flux SAEs; this module adds the
spliced metric for a diffusion pipeline. Three runs of the pipeline on the same prompts and noise:

- clean: nothing changed (the hooked stream's mean over all tokens and steps is recorded);
- ablated: the hooked stream replaced by that mean at every step;
- reconstructed: the hooked stream replaced by ``dictionary(stream)`` at every step.

The transformer's velocity prediction at every step (and the final image) of each run is compared
with the clean run::

    recovered = 1 - ||v_reconstructed - v_clean||^2 / ||v_ablated - v_clean||^2

1 for a perfect dictionary (identity), 0 for one that only outputs the mean (a dictionary with a
zero decoder and the mean as its bias), negative when splicing is worse than mean ablation. Later
steps run from the patched trajectory, so the velocity metric includes compounding errors.

Legend: B batch, T tokens, D width.

Example:
    >>> result = downstream(Flux.tiny(), SAE.load_from_disk("sae"),  # doctest: +SKIP
    ...                     "double.1.img", prompts)
    >>> result.velocity_recovered, result.image_recovered  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from sae_flux import hooks as hookpoints

logger = logging.getLogger(__name__)

class DownstreamResult(NamedTuple):
    """Fractions of the mean-ablation change recovered by the dictionary, and the raw changes."""

    velocity_recovered: float
    image_recovered: float
    velocity_change_ablated: float
    """Mean squared difference of the velocity predictions, ablated vs clean."""
    velocity_change_reconstructed: float
    image_change_ablated: float
    image_change_reconstructed: float
    prompts: int


@contextmanager
def recorded_velocities(pipeline: Any, into: list[Tensor]) -> Iterator[None]:
    """Append the transformer's prediction of every call to ``into``."""

    def on_output(_mod: torch.nn.Module, _args: Any, output: Any) -> None:
        into.append((output[0] if isinstance(output, tuple) else output.sample).detach().float().cpu())

    handle = pipeline.transformer.register_forward_hook(on_output)
    try:
        yield
    finally:
        handle.remove()


class _Run(NamedTuple):
    velocities: Tensor
    images: Tensor


def _run(flux: Any, prompts: Sequence[str], hook: str, edit: hookpoints.StreamFn, seed: int, kwargs: dict[str, Any]) -> _Run:
    velocities: list[Tensor] = []
    with torch.no_grad(), recorded_velocities(flux.pipeline, velocities), hookpoints.editing(flux.pipeline, hook, edit):
        images = flux.generate(list(prompts), seed=seed, **kwargs)
    return _Run(torch.cat([v.flatten() for v in velocities]), images.float().cpu())


def dictionary_edit(dictionary: Callable[[Tensor], Tensor]) -> hookpoints.StreamFn:
    """``stream -> dictionary(stream)`` over flattened tokens, in the dictionary's dtype/device."""

    def edit(stream_BTD: Float[Tensor, "b t d"]) -> Tensor:
        dtype = getattr(dictionary, "dtype", stream_BTD.dtype)
        device = getattr(dictionary, "device", stream_BTD.device)
        flat_ND = stream_BTD.reshape(-1, stream_BTD.shape[-1]).to(device, dtype)
        return dictionary(flat_ND).reshape(stream_BTD.shape).to(stream_BTD.device, stream_BTD.dtype)

    return edit


def _recovered(changed_rec: float, changed_abl: float, what: str, hook: str) -> float:
    if changed_abl == 0:
        raise ValueError(f"mean-ablating {hook} does not change the {what}: the recovered fraction is undefined")
    return 1 - changed_rec / changed_abl


@torch.no_grad()
def downstream(
    flux: Any,
    dictionary: Callable[[Tensor], Tensor],
    hook: str,
    prompts: Sequence[str],
    seed: int = 0,
    ablation_mean: Tensor | None = None,
    **generation: Any,
) -> DownstreamResult:
    """How much of the change caused by mean-ablating ``hook`` the dictionary's reconstruction recovers.

    Args:
        flux: a :class:`sae_flux.Flux`.
        dictionary: anything mapping ``(tokens, d)`` activations to reconstructions (an sae_lens
            ``SAE`` of any architecture, an ITDA dictionary, or a plain function).
        hook: the hook point the dictionary was trained on.
        prompts: prompts of the three runs; prompt ``j`` uses seed ``seed + j``.
        ablation_mean: the mean to ablate with (default: the clean run's mean over all tokens/steps).
        generation: pipeline overrides (``num_inference_steps``, ``height`` ...).
    """
    if not prompts:
        raise ValueError("downstream needs at least one prompt")
    flux.resolve(hook)
    streams: list[Tensor] = []

    def record(stream: Tensor) -> Tensor:
        streams.append(stream.detach().float().reshape(-1, stream.shape[-1]).cpu())
        return stream

    clean = _run(flux, prompts, hook, record, seed, generation)
    mean_D = torch.cat(streams).mean(0) if ablation_mean is None else ablation_mean.float().cpu()
    ablated = _run(flux, prompts, hook, lambda s: mean_D.to(s.device, s.dtype).expand_as(s).clone(), seed, generation)
    rebuilt = _run(flux, prompts, hook, dictionary_edit(dictionary), seed, generation)
    v_abl = (ablated.velocities - clean.velocities).pow(2).mean().item()
    v_rec = (rebuilt.velocities - clean.velocities).pow(2).mean().item()
    i_abl = (ablated.images - clean.images).pow(2).mean().item()
    i_rec = (rebuilt.images - clean.images).pow(2).mean().item()
    result = DownstreamResult(
        velocity_recovered=_recovered(v_rec, v_abl, "velocity prediction", hook),
        image_recovered=_recovered(i_rec, i_abl, "image", hook),
        velocity_change_ablated=v_abl,
        velocity_change_reconstructed=v_rec,
        image_change_ablated=i_abl,
        image_change_reconstructed=i_rec,
        prompts=len(prompts),
    )
    logger.info("downstream %s: velocity recovered %.4f, image recovered %.4f",
                hook, result.velocity_recovered, result.image_recovered)
    return result
