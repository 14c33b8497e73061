"""The organism's ground truth as an explainer and a rater: the ceiling of every explanation score.

On the organism every image token's concepts are known (:func:`sae_flux.interp.dissect.world_labels`,
from :meth:`sae_flux.organism.world.World.token_labels`). :class:`OracleInterpreter` is shown what a
VLM explainer is shown (a feature's selected images and their activation maps) and names the concept
whose token mask best overlaps the highlighted tokens (IoU over those images, Bau et al. 2017;
among concepts within :data:`TIE` of the best IoU, the one shown by the fewest indexed images, so
"red" wins over "object" when the shown objects are all red); as
a rater it says from the ground truth whether an image (detection) or a highlighted region
(fuzzing) shows the concepts an explanation names. It implements both
:class:`sae_flux.interp.explain.Interpreter` and :class:`sae_flux.interp.score.RegionRater`, so the
same scoring code measures a VLM's explanations, the oracle's (the ceiling) and shuffled ones (the
floor), and the oracle can rate any explanation (the ground-truth score of a VLM's text).

An explanation's concepts are read from its words (:meth:`Truth.named`): a shape, colour,
position or size word (plurals too), ``object``, or ``background`` with ``black``/``white``.

Example:
    >>> truth = Truth.of_prompts(prompts, seed=0)  # doctest: +SKIP
    >>> truth.named("red shapes on a black background")  # doctest: +SKIP
    ['red', 'background:black']
    >>> interpret(index, OracleInterpreter(truth), features=[3, 9], n_distractors=0)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sae_flux.interp.dissect import Labels, world_labels
from sae_flux.interp.explain import Explanation
from sae_flux.interp.index import IndexReader
from sae_flux.interp.select import Selection

logger = logging.getLogger(__name__)

BACKGROUND = "background:"
#: IoU margin within which the oracle prefers the rarer concept (the more specific explanation).
TIE = 0.01
#: Indexed images the oracle reads to measure how common each concept is.
PREVALENCE_IMAGES = 256


def readable(concept: str) -> str:
    """``background:black`` -> ``black background``; other concept names as they are."""
    return f"{concept[len(BACKGROUND):]} background" if concept.startswith(BACKGROUND) else concept


@dataclass
class Truth:
    """Token ground truth of the images of an index: which concepts each token shows."""

    labels: Labels
    concept_fraction: float = 0.5
    """A token shows a concept when at least this fraction of its pixels do."""

    @classmethod
    def of_prompts(cls, prompts: Sequence[str], seed: int, concept_fraction: float = 0.5) -> Truth | None:
        """The organism's ground truth when ``prompts`` are ``world.prompts(n, seed)``, else None."""
        try:
            return cls(world_labels(prompts, seed=seed), concept_fraction)
        except ValueError as err:
            logger.info("no ground truth for these prompts: %s", err)
            return None

    def concepts(self, image: int = 0) -> tuple[str, ...]:
        return tuple(self.labels(image)[0])

    def masks(self, image: int) -> np.ndarray:
        """Whether each token of ``image`` shows each concept: bool (h, w, C)."""
        return np.asarray(self.labels(int(image))[1] >= self.concept_fraction, dtype=bool)

    def named(self, text: str) -> list[str]:
        """The concepts an explanation names, in concept order."""
        words = set(re.findall(r"[a-z]+", text.lower()))
        words |= {w[:-1] for w in words if w.endswith("s")}
        found = []
        for concept in self.concepts():
            if concept.startswith(BACKGROUND):
                hit = "background" in words and concept[len(BACKGROUND):] in words
            else:
                hit = concept in words
            if hit:
                found.append(concept)
        return found

    def shows(self, image: int, concepts: Sequence[str]) -> bool:
        """Whether every one of ``concepts`` is shown by some token of ``image``."""
        if not concepts:
            return False
        names = self.concepts(image)
        present = np.asarray(self.masks(image).any(axis=(0, 1)))
        return all(bool(present[names.index(c)]) for c in concepts)

    def region_share(self, image: int, concepts: Sequence[str], region_hw: Tensor) -> float:
        """Share of the region's tokens that show at least one of ``concepts`` (0 for an empty region)."""
        region = region_hw.bool().numpy()
        if not concepts or not region.any():
            return 0.0
        names = self.concepts(image)
        masks = np.asarray(self.masks(image)[..., [names.index(c) for c in concepts]].any(-1))
        if masks.shape != region.shape:
            raise ValueError(f"ground-truth grid {masks.shape} != activation grid {region.shape}")
        return float(masks[region].mean())


class OracleInterpreter:
    """Explains with the best-overlapping ground-truth concept; rates from the ground truth."""

    name = "oracle"
    uses_images = False

    def __init__(self, truth: Truth, threshold: float = 0.2) -> None:
        self.truth = truth
        self.threshold = threshold
        """A token is highlighted when the feature exceeds this fraction of its peak on the shown images."""
        self._prevalence_C: Tensor | None = None

    def prevalence(self, index: IndexReader) -> Tensor:
        """Share of (up to PREVALENCE_IMAGES) indexed images that show each concept."""
        if self._prevalence_C is None:
            images = range(min(index.num_images, PREVALENCE_IMAGES))
            shown = np.stack([self.truth.masks(i).any(axis=(0, 1)) for i in images])
            self._prevalence_C = torch.from_numpy(shown.mean(0))
        return self._prevalence_C

    def explain(self, index: IndexReader, selection: Selection) -> Explanation:
        on_IHW = selection.maps_IHW > self.threshold * float(selection.maps_IHW.max())
        masks_IHWC = torch.from_numpy(np.stack([self.truth.masks(i) for i in selection.images]))
        inter_C = (on_IHW[..., None] & masks_IHWC).sum((0, 1, 2)).float()
        union_C = (on_IHW[..., None] | masks_IHWC).sum((0, 1, 2)).float()
        iou_C = inter_C / union_C.clamp(min=1)
        close = iou_C >= float(iou_C.max()) - TIE
        best = int(torch.where(close, self.prevalence(index), torch.inf).argmin())
        concept = self.truth.concepts(selection.images[0])[best]
        shares = [f"{self.truth.region_share(i, [concept], on_HW):.2f} of the highlighted tokens show {readable(concept)}"
                  for i, on_HW in zip(selection.images, on_IHW, strict=True)]
        return Explanation(readable(concept), shares)

    def rate(self, explanation: str, index: IndexReader, images: Sequence[int]) -> list[float]:
        """1 when the image shows every concept the explanation names, else 0."""
        concepts = self.truth.named(explanation)
        return [float(self.truth.shows(int(i), concepts)) for i in images]

    def rate_regions(self, explanation: str, index: IndexReader, images: Sequence[int],
                     regions_Ihw: Tensor) -> list[float]:
        """Share of each highlighted region's tokens that show a concept the explanation names."""
        concepts = self.truth.named(explanation)
        return [self.truth.region_share(int(i), concepts, r) for i, r in zip(images, regions_Ihw, strict=True)]
