"""Measuring steering on the organism with its pixel judge: hit rate, spill-over, degradation.

The Flux paper (Shabalin et al. 2025, arXiv 2505.24360) shows steered pictures only. Here every
concept (a colour or a shape of the organism's world) is steered into held-out captions that do
not mention it, on the object's tokens (dilated by one token), and the pixel judge
(:mod:`sae_flux.organism.judge`) reads the result back:

- ``hit``: share of images where the concept appears (colour: some object of that colour;
  shape: the main object has that shape); at scale 0 it is the false-positive floor;
- ``outside``: mean absolute pixel change (0..1) outside the steered region, vs the unsteered image;
- ``clean``: share of pixels within the judge's colour distance of a palette or background
  colour (artefacts are off-palette), the degradation measure.

Legend: B images, h/w token rows/cols, H/W pixel rows/cols.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from sae_flux.organism.judge import JudgeConfig, judge, judge_objects, to_uint8
from sae_flux.organism.world import BACKGROUNDS, PALETTE, SHAPES, Sample, World
from sae_flux.steer import add, steering


class Targets(NamedTuple):
    """Held-out scenes to steer one concept into, with their object regions."""

    concept: str
    samples: list[Sample]
    region_Bhw: Bool[Tensor, "B h w"]


def targets(concept: str, n: int, seed: int = 0, world: World | None = None) -> Targets:
    """``n`` single-object held-out scenes whose caption does not mention ``concept``."""
    world = world or World()
    factor = "shape" if concept in SHAPES else "colour"
    chosen: list[Sample] = []
    for sample in world.examples(50 * n, seed=seed + 7, split="heldout", num_objects=1):
        if getattr(sample.scene.main, factor) != concept and concept not in sample.caption.split():
            chosen.append(sample)
        if len(chosen) == n:
            break
    masks = [world.token_labels(s.scene) for s in chosen]
    obj = torch.from_numpy(np.stack([m.fractions_hwC[..., m.concepts.index("object")] for m in masks])) > 0
    region = F.max_pool2d(obj.float()[:, None], 3, stride=1, padding=1)[:, 0] > 0
    return Targets(concept, chosen, region)


def hits(images: Float[Tensor, "B 3 H W"], concept: str) -> list[bool]:
    """Whether the judge sees ``concept`` in each image."""
    arrays = [to_uint8(img.permute(1, 2, 0).float().cpu().numpy()) for img in images]
    if concept in SHAPES:
        return [judge(a).shape == concept for a in arrays]
    return [any(v.colour == concept for v in judge_objects(a)) for a in arrays]


def clean_fraction(images: Float[Tensor, "B 3 H W"], cfg: JudgeConfig | None = None) -> Float[Tensor, " B"]:
    """Share of pixels near a palette or background colour (in the judge's RGB distance)."""
    cfg = cfg or JudgeConfig()
    colours_K3 = torch.tensor(list(PALETTE.values()) + list(BACKGROUNDS.values()), dtype=torch.float32)
    pixels_BHW3 = images.permute(0, 2, 3, 1).float().clamp(0, 1) * 255
    dist_BHWK = (pixels_BHW3[..., None, :] - colours_K3).norm(dim=-1)
    return (dist_BHWK.amin(-1) <= cfg.max_colour_distance).float().flatten(1).mean(1)


def outside_change(
    images: Float[Tensor, "B 3 H W"], base: Float[Tensor, "B 3 H W"], region_Bhw: Bool[Tensor, "B h w"]
) -> Float[Tensor, " B"]:
    """Mean absolute pixel change outside the (upsampled) token region."""
    scale = images.shape[-1] // region_Bhw.shape[-1]
    inside_BHW = region_Bhw.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    diff_BHW = (images.float() - base.float()).abs().mean(1)
    outside = (~inside_BHW).float()
    return (diff_BHW * outside).flatten(1).sum(1) / outside.flatten(1).sum(1).clamp(min=1)


@dataclass(frozen=True)
class Condition:
    """One steering setting: a direction (``None``: unsteered), a relative scale, the first steps edited."""

    method: str
    direction_D: Tensor | None = None
    scale: float = 0.0
    first_steps: int = 0


def generate(
    flux: Any, hook: str, t: Targets, conditions: Sequence[Condition], seed: int = 0, batch: int = 64
) -> list[Tensor]:
    """Images of the targets under every condition, several conditions per pipeline call.

    Each condition's edit covers only its own rows (a per-image region mask that is empty
    elsewhere), and every row of target ``i`` uses the noise of seed ``seed + i``, so the
    unsteered condition is the baseline of every steered one.
    """
    n = len(t.samples)
    prompts = [s.caption for _ in conditions for s in t.samples]
    ids = [i for _ in conditions for i in range(n)]
    images = []
    for start in range(0, len(prompts), batch):
        rows = range(start, min(start + batch, len(prompts)))
        edits = []
        for c, cond in enumerate(conditions):
            mine = [r for r in rows if r // n == c]
            if cond.direction_D is None or not mine:
                continue
            region_Bhw = torch.zeros((len(rows),) + t.region_Bhw.shape[1:], dtype=torch.bool)
            for r in mine:
                region_Bhw[r - start] = t.region_Bhw[r % n]
            edits.append(add(cond.direction_D, cond.scale, relative=True, region=region_Bhw,
                             steps=range(cond.first_steps)))
        chunk = [prompts[r] for r in rows]
        chunk_ids = [ids[r] for r in rows]
        if edits:
            with steering(flux, hook, edits):
                images.append(flux.generate(chunk, seed=seed, prompt_ids=chunk_ids))
        else:
            images.append(flux.generate(chunk, seed=seed, prompt_ids=chunk_ids))
    all_images = torch.cat(images)
    return [all_images[c * n : (c + 1) * n] for c in range(len(conditions))]


def score(images: Tensor, base: Tensor, t: Targets) -> dict[str, float]:
    """Hit rate, outside change and clean-pixel share of one steered batch."""
    return {
        "hit": float(np.mean(hits(images, t.concept))),
        "outside": float(outside_change(images, base, t.region_Bhw).mean()),
        "clean": float(clean_fraction(images).mean()),
    }


class Sweep(NamedTuple):
    """Scored rows (one per condition) and the images (condition -> [B, 3, H, W])."""

    rows: list[dict[str, Any]]
    images: list[Tensor]


def sweep(
    flux: Any, hook: str, t: Targets, conditions: Sequence[Condition], seed: int = 0, batch: int = 64
) -> Sweep:
    """Score every condition on the targets against the unsteered images (prepended as ``none``)."""
    conditions = [Condition("none"), *conditions]
    images = generate(flux, hook, t, conditions, seed, batch)
    rows = [
        {"concept": t.concept, "method": c.method, "scale": c.scale, "first_steps": c.first_steps,
         **score(imgs, images[0], t)}
        for c, imgs in zip(conditions, images, strict=True)
    ]
    return Sweep(rows, images)


def summarise(rows: Sequence[dict[str, Any]], keys: Sequence[str] = ("method", "scale", "first_steps")) -> list[dict[str, Any]]:
    """Mean of hit / outside / clean over concepts, per setting."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return [
        {**dict(zip(keys, key, strict=True)), "concepts": len(group),
         **{m: round(float(np.mean([r[m] for r in group])), 4) for m in ("hit", "outside", "clean")}}
        for key, group in groups.items()
    ]
