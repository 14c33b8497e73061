"""Generate world scenes with the organism and score them with the pixel judge.

The evaluation follows the model-organism idea (design.md): captions come from the scene world
with held-out templates, the organism draws them, and ``sae_flux.organism.judge`` reads the
factors back from pixels, so accuracy per attribute needs no human or learned labeller.

Example:
    >>> from diffusers import FluxPipeline
    >>> from sae_flux.organism import weights_dir
    >>> from sae_flux.organism.evaluate import evaluate_organism
    >>> pipe = FluxPipeline.from_pretrained(weights_dir())  # doctest: +SKIP
    >>> evaluate_organism(pipe, n=24).accuracy["colour"]  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from diffusers import FluxPipeline
from tqdm.auto import tqdm

from sae_flux.organism.judge import Verdict, accuracy, judge, judge_objects
from sae_flux.organism.world import Sample, Split, World
from sae_flux.tiny import GenerationDefaults

logger = logging.getLogger(__name__)


class Evaluation(NamedTuple):
    """Generated images of held-out samples, the judge's verdicts and per-attribute accuracy."""

    samples: list[Sample]
    images: list[np.ndarray]
    verdicts: list[Verdict]
    accuracy: dict[str, float]


def pipeline_defaults(pipe: FluxPipeline) -> GenerationDefaults:
    """The ``sae_flux.json`` defaults saved with ``pipe`` (library defaults if absent)."""
    path = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path")
    loaded = GenerationDefaults.load(Path(path)) if path else None
    return loaded or GenerationDefaults(max_sequence_length=24, num_inference_steps=8)


@torch.no_grad()
def generate_images(
    pipe: FluxPipeline, captions: Sequence[str], seed: int = 0,
    num_inference_steps: int | None = None, batch_size: int = 32,
) -> list[np.ndarray]:
    """uint8 RGB images of ``captions`` (one seeded generator for the whole run)."""
    defaults = pipeline_defaults(pipe)
    steps = num_inference_steps or defaults.num_inference_steps
    generator = torch.Generator().manual_seed(seed)
    pipe.set_progress_bar_config(disable=True)
    images: list[np.ndarray] = []
    for start in tqdm(range(0, len(captions), batch_size), desc="generate", leave=False):
        out = pipe(
            list(captions[start:start + batch_size]), height=defaults.resolution,
            width=defaults.resolution, num_inference_steps=steps,
            guidance_scale=defaults.guidance_scale,
            max_sequence_length=defaults.max_sequence_length, generator=generator,
            output_type="np",
        )
        images.extend(np.clip(np.rint(out.images * 255), 0, 255).astype(np.uint8))
    return images


def evaluate_organism(
    pipe: FluxPipeline, n: int = 120, seed: int = 0, split: Split = "heldout",
    num_inference_steps: int | None = None, world: World | None = None,
) -> Evaluation:
    """Judge ``n`` single-object generations from ``split`` captions against their scenes."""
    world = world or World()
    samples = list(world.examples(n, seed=seed, split=split, num_objects=1))
    images = generate_images(pipe, [s.caption for s in samples], seed=seed,
                             num_inference_steps=num_inference_steps)
    verdicts = [judge(image) for image in images]
    return Evaluation(samples, images, verdicts, accuracy(verdicts, [s.scene for s in samples]))


def evaluate_pairs(
    pipe: FluxPipeline, n: int = 60, seed: int = 0, split: Split = "heldout",
    num_inference_steps: int | None = None, world: World | None = None,
) -> dict[str, float]:
    """On two-object captions: how often the judge finds both named colours, and at their places."""
    if n < 1:
        raise ValueError(f"n must be >= 1 two-object captions, got {n}")
    world = world or World()
    samples = list(world.examples(n, seed=seed, split=split, num_objects=2))
    images = generate_images(pipe, [s.caption for s in samples], seed=seed,
                             num_inference_steps=num_inference_steps)
    colours = placed = 0
    for sample, image in zip(samples, images, strict=True):
        found = {v.colour: v.position for v in judge_objects(image)}
        colours += all(o.colour in found for o in sample.scene.objects)
        placed += all(found.get(o.colour) == o.position for o in sample.scene.objects)
    return {"both_colours": colours / n, "both_colours_and_positions": placed / n}


def sample_grid(evaluation: Evaluation, path: Path, columns: int = 6, rows: int = 3) -> Path:
    """A PNG grid of captions and generations; the judge's reading under each, green if right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(columns * rows, len(evaluation.images))
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.6 * rows))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i >= count:
            continue
        sample, verdict = evaluation.samples[i], evaluation.verdicts[i]
        main = sample.scene.main
        ax.imshow(evaluation.images[i], interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(sample.caption, 26)), fontsize=6.5)
        right = all(getattr(verdict, a) == getattr(main, a)
                    for a in ("colour", "shape", "position", "size"))
        reading = (f"judge: {verdict.size} {verdict.colour} {verdict.shape}, {verdict.position}"
                   if verdict.found else "judge: nothing found")
        ax.text(0.5, -0.06, reading, transform=ax.transAxes, ha="center", va="top",
                fontsize=6.5, color="green" if right else "red")
    fig.suptitle("Flux organism: held-out captions and generations", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
