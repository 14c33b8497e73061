"""Which direction shows a concept: the best-matching dictionary feature or a difference of means.

The Flux paper (Shabalin et al. 2025, arXiv 2505.24360) picks steering features by hand from
their interpretations. On the organism every image token has ground-truth concept fractions
(:meth:`sae_flux.organism.world.World.token_labels`), so a feature is matched to a concept by the
Pearson correlation of its activation with the concept's token fraction, and the dictionary-free
baseline is the difference of means (the CAA / CAE recipe, Rimsky et al. 2024; Hao et al. 2025):
mean activation of tokens showing the concept minus that of object tokens showing another value
of the same factor.

Legend: N tokens, D model width, F features, C concepts.

Example:
    >>> data = concept_tokens(flux, "double.1.img", n_scenes=64)            # doctest: +SKIP
    >>> match = best_features(sae, data)["red"]                             # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sae_flux.organism.world import PALETTE, SHAPES, World

#: The steering concepts of the organism: every colour and shape.
CONCEPTS: tuple[str, ...] = tuple(PALETTE) + SHAPES


class ConceptTokens(NamedTuple):
    """Image tokens of generated scenes with their ground-truth concept fractions."""

    acts_ND: Float[Tensor, "N D"]
    labels_NC: Float[Tensor, "N C"]
    concepts: tuple[str, ...]

    def column(self, concept: str) -> Tensor:
        return self.labels_NC[:, self.concepts.index(concept)]


class Match(NamedTuple):
    """The feature of a dictionary that best tracks a concept."""

    feature: int
    correlation: float


def concept_tokens(
    flux: Any, hook: str, n_scenes: int = 128, seed: int = 0, steps: list[int] | None = None,
    world: World | None = None,
) -> ConceptTokens:
    """Capture ``hook`` on single-object training scenes and label every token (all kept steps)."""
    world = world or World(resolution=flux.resolution)
    if flux.grid() != (flux.resolution // world.patch,) * 2:
        raise ValueError(f"token grid {flux.grid()} does not match the world's patch {world.patch} at {flux.resolution} px")
    samples = list(world.examples(n_scenes, seed=seed, split="train", num_objects=1))
    acts = flux.capture([s.caption for s in samples], hooks=[hook], steps=steps, seed=seed)[hook]
    n_prompt, n_step, n_token, width = acts.shape
    labels = [world.token_labels(s.scene) for s in samples]
    labels_PTC = torch.from_numpy(np.stack([lab.fractions_hwC.reshape(n_token, -1) for lab in labels])).float()
    labels_NC = labels_PTC[:, None].expand(n_prompt, n_step, n_token, -1).reshape(-1, labels_PTC.shape[-1])
    return ConceptTokens(acts.reshape(-1, width), labels_NC, labels[0].concepts)


def correlations(latents_NF: Float[Tensor, "N F"], labels_NC: Float[Tensor, "N C"]) -> Float[Tensor, "F C"]:
    """Pearson correlation of every feature with every concept fraction (0 for constant columns)."""
    def standardise(x: Tensor) -> Tensor:
        x = x.double() - x.double().mean(0)
        std = x.norm(dim=0)
        return x / torch.where(std > 0, std, torch.ones_like(std))

    return (standardise(latents_NF).T @ standardise(labels_NC)).float()


def encode(dictionary: Any, acts_ND: Tensor, batch: int = 4096) -> Float[Tensor, "N F"]:
    """Feature activations of ``acts_ND`` (batched, no grad)."""
    with torch.no_grad():
        parts = [dictionary.encode(acts_ND[i : i + batch].to(dictionary.W_dec.dtype)).float()
                 for i in range(0, len(acts_ND), batch)]
    return torch.cat(parts)


def best_features(dictionary: Any, data: ConceptTokens, concepts: tuple[str, ...] = CONCEPTS) -> dict[str, Match]:
    """For each concept, the feature whose activation correlates best with its token fraction."""
    corr_FC = correlations(encode(dictionary, data.acts_ND), data.labels_NC)
    matches = {}
    for concept in concepts:
        column = corr_FC[:, data.concepts.index(concept)]
        feature = int(column.argmax())
        matches[concept] = Match(feature, float(column[feature]))
    return matches


def difference_of_means(data: ConceptTokens, concept: str, threshold: float = 0.5) -> Float[Tensor, " D"]:
    """Mean of tokens showing ``concept`` minus mean of object tokens showing none of it."""
    shows = data.column(concept) >= threshold
    others = (data.column("object") >= threshold) & (data.column(concept) == 0)
    if not shows.any() or not others.any():
        raise ValueError(f"no tokens show {concept!r} (or no object tokens lack it): sample more scenes")
    return data.acts_ND[shows].mean(0) - data.acts_ND[others].mean(0)


def concept_tokens_from_cache(
    cache: str | Path, n_scenes: int, seed: int, world: World | None = None
) -> ConceptTokens:
    """Concept tokens of the first ``n_scenes`` prompts of a cache written from ``prompts(n, seed)``.

    The scenes are re-drawn from the same seed (``World.examples``), and each token's label is
    looked up by its provenance (prompt, h, w), so no image is generated.
    """
    from sae_flux.cache import CacheReader

    world = world or World()
    samples = list(world.examples(n_scenes, seed=seed))
    labels_PhwC = np.stack([world.token_labels(s.scene).fractions_hwC for s in samples])
    concepts = world.token_labels(samples[0].scene).concepts
    acts, labels = [], []
    for acts_ND, prov in CacheReader(cache).iter_shards():
        keep = prov["prompt"] < n_scenes
        if not keep.any():
            break
        p, h, w = prov["prompt"][keep], prov["h"][keep], prov["w"][keep]
        acts.append(acts_ND[keep].float())
        labels.append(torch.from_numpy(labels_PhwC[p.numpy(), h.numpy(), w.numpy()]).float())
    if not acts:
        raise ValueError(f"cache {cache} holds none of the first {n_scenes} prompts")
    return ConceptTokens(torch.cat(acts), torch.cat(labels), concepts)
