"""The Flux model organism: a tiny real FluxPipeline trained on a procedural scene world.

See design.md, "Model organisms". The world (:mod:`sae_flux.organism.world`) draws scenes with
known captions, factor labels and per-pixel masks; :mod:`sae_flux.organism.train` trains the
pipeline; :mod:`sae_flux.organism.judge` reads the factors back from generated pixels.

Example:
    >>> from diffusers import FluxPipeline
    >>> from sae_flux.organism import prompts, weights_dir
    >>> pipe = FluxPipeline.from_pretrained(weights_dir())  # doctest: +SKIP
    >>> images = pipe(prompts(4, split="heldout"), height=32, width=32,
    ...               num_inference_steps=8, guidance_scale=0.0).images  # doctest: +SKIP
"""

from sae_flux.organism.weights import (
    OrganismWeightsError,
    VocabularyError,
    check_captions,
    check_vocabulary,
    check_weights,
    vocabulary,
    weights_dir,
)
from sae_flux.organism.world import Scene, SceneObject, World, prompts

__all__ = [
    "OrganismWeightsError",
    "Scene",
    "SceneObject",
    "VocabularyError",
    "World",
    "check_captions",
    "check_vocabulary",
    "check_weights",
    "prompts",
    "vocabulary",
    "weights_dir",
]
