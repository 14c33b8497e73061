"""The procedural scene world of the Flux organism: shapes with known captions, labels and masks.

A toy version of the "model organism" idea (design.md, "Model organisms"): every image is drawn
from a handful of discrete factors (shape kind, colour, position, size, background), so any
pixel, and any transformer image token, can be labelled with the concepts it shows. The
interpretation and steering code use these labels as ground truth; the organism
(``sae_flux.organism.train``) learns to draw these scenes from their captions.

A scene holds one or two objects. Captions come from templates; :data:`HELDOUT_TEMPLATES`
never appear in training and are used to evaluate generation from unseen phrasings.

Legend: N = scenes, H/W = pixel rows/columns, C = concepts, h/w = token rows/columns.

Example:
    >>> from sae_flux.organism.world import World
    >>> world = World()
    >>> scene = world.sample(seed=0)
    >>> image_HW3 = world.render(scene)
    >>> image_HW3.shape
    (32, 32, 3)
    >>> world.caption(scene, template=0)  # doctest: +SKIP
    'a small red circle at the left on a black background'
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
from jaxtyping import Bool, Float, UInt8

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Object colours: name -> RGB. Chosen far apart so the judge can classify pixels by distance.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 30),
    "purple": (150, 50, 200),
    "orange": (250, 140, 20),
}
#: Background colours: name -> RGB.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255)}
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
#: Position -> object centre as a fraction of the image side (x, y).
ANCHORS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
SIZES: tuple[str, ...] = ("small", "large")
#: Size -> object half-extent as a fraction of the image side.
RADII: dict[str, float] = {"small": 0.125, "large": 0.22}
OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}

#: The slots every caption of the world fills, each with the words that fill it. A caption that
#: leaves one empty (say, no background) is off the grammar the organism was trained on.
SLOTS: dict[str, tuple[str, ...]] = {
    "size": SIZES,
    "colour": tuple(PALETTE),
    "shape": SHAPES,
    "position": POSITIONS,
    "background": tuple(BACKGROUNDS),
}

#: Caption templates seen in training. Slots: {size} {colour} {shape} {position} {background}.
TRAIN_TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {shape} at the {position} on a {background} background",
    "a {colour} {shape} , {size} , at the {position} , {background} background",
    "{size} {colour} {shape} on the {position} , {background} background",
    "a picture of a {size} {colour} {shape} at the {position} on {background}",
    "an image of a {colour} {shape} that is {size} , {position} , on {background}",
    "{background} background with a {size} {colour} {shape} at the {position}",
    # varied openings and fillers, so phrasings never seen in training (HELDOUT_TEMPLATES)
    # are read for their factor words rather than their exact word order
    "a photo of a {size} {colour} {shape} at the {position} on a {background} background",
    "a sketch of a {colour} {shape} , {size} , on the {position} , {background} background",
    "there is a {size} {colour} {shape} at the {position} on a {background} background",
    "a {background} background showing a {size} {colour} {shape} on the {position}",
    "an illustration of a {size} {colour} {shape} on the {position} , {background}",
    "in this image a {size} {colour} {shape} sits at the {position} on {background}",
)
#: Caption templates held out of training, for evaluation on unseen phrasings.
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a drawing of a {size} {colour} {shape} on the {position} with a {background} background",
    "on a {background} background , a {colour} {shape} , {size} , at the {position}",
)
#: How a second object is joined to the first object's phrase in two-object captions.
PAIR_JOIN = "{first} and a {size} {colour} {shape} at the {position}"

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its factors and a small pixel offset of its centre.

    Example:
        >>> obj = SceneObject("circle", "red", "left", "small")
        >>> obj.shape, obj.offset
        ('circle', (0, 0))
    """

    shape: str
    colour: str
    position: str
    size: str
    offset: tuple[int, int] = (0, 0)
    """Jitter of the centre in pixels (dx, dy), so positions are regions, not points."""


@dataclass(frozen=True)
class Scene:
    """A scene: a background and one or two objects (the first is the main one).

    Example:
        >>> scene = Scene((SceneObject("square", "blue", "right", "large"),), background="white")
        >>> scene.main.colour, World(resolution=32).render(scene).shape
        ('blue', (32, 32, 3))
    """

    objects: tuple[SceneObject, ...]
    background: str = "black"

    @property
    def main(self) -> SceneObject:
        return self.objects[0]


class Sample(NamedTuple):
    """A rendered scene with its caption, factor labels and per-object visible masks."""

    scene: Scene
    caption: str
    image_HW3: UInt8[np.ndarray, "H W 3"]
    masks_OHW: Bool[np.ndarray, "O H W"]


class TokenLabels(NamedTuple):
    """Fraction of each token's pixels that shows each concept."""

    concepts: tuple[str, ...]
    fractions_hwC: Float[np.ndarray, "h w C"]


@dataclass
class World:
    """Factors, renderer and captioner of the scene world.

    Example:
        >>> world = World(resolution=32, two_object_rate=0.0)
        >>> s = world.example(seed=3)
        >>> s.masks_OHW.shape
        (1, 32, 32)
    """

    resolution: int = 32
    """Image height and width in pixels."""
    two_object_rate: float = 0.1
    """Probability that a sampled scene holds a second object."""
    white_background_rate: float = 0.25
    """Probability of a white background (black otherwise)."""
    jitter: int = 1
    """Maximum centre jitter in pixels, per axis."""
    patch: int = 4
    """Pixels per transformer image token side (VAE stride 2 x 2x2 packing = 4)."""
    templates: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"train": TRAIN_TEMPLATES, "heldout": HELDOUT_TEMPLATES}
    )

    def __post_init__(self) -> None:
        if self.resolution < 16 or self.resolution % self.patch:
            raise ValueError(
                f"resolution {self.resolution} must be >= 16 and divisible by patch {self.patch}"
            )
        for name, rate in (("two_object_rate", self.two_object_rate),
                           ("white_background_rate", self.white_background_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")

    # ---- sampling -------------------------------------------------------------------------
    def sample(self, seed: int, num_objects: int | None = None) -> Scene:
        """A random scene, the same for the same ``seed``; ``num_objects`` forces 1 or 2."""
        rng = random.Random(seed)
        if num_objects is None:
            num_objects = 2 if rng.random() < self.two_object_rate else 1
        if num_objects not in (1, 2):
            raise ValueError(f"num_objects must be 1 or 2, got {num_objects}")
        background = "white" if rng.random() < self.white_background_rate else "black"
        if num_objects == 1:
            positions = [rng.choice(POSITIONS)]
        else:
            first = rng.choice(tuple(OPPOSITE))
            positions = [first, OPPOSITE[first]]
        colours = rng.sample(tuple(PALETTE), k=num_objects)
        objects = tuple(
            SceneObject(
                shape=rng.choice(SHAPES),
                colour=colour,
                position=position,
                size=rng.choice(SIZES),
                offset=(rng.randint(-self.jitter, self.jitter),
                        rng.randint(-self.jitter, self.jitter)),
            )
            for colour, position in zip(colours, positions, strict=True)
        )
        return Scene(objects=objects, background=background)

    def caption(self, scene: Scene, template: int | str, split: Split = "train") -> str:
        """The caption of ``scene`` in template ``template`` (an index into ``split``, or a string)."""
        text = template if isinstance(template, str) else self.templates[split][template]
        main = scene.main
        caption = text.format(
            size=main.size, colour=main.colour, shape=main.shape,
            position=main.position, background=scene.background,
        )
        for extra in scene.objects[1:]:
            candidates = (f"at the {main.position}", f"the {main.position}", main.position)
            phrase = next(c for c in candidates if c in caption)
            joined = PAIR_JOIN.format(
                first=phrase, size=extra.size, colour=extra.colour,
                shape=extra.shape, position=extra.position,
            )
            caption = caption.replace(phrase, joined, 1)
        return caption

    def example(self, seed: int, split: Split = "train", num_objects: int | None = None) -> Sample:
        """Scene, caption (template drawn from ``split``), image and masks for ``seed``."""
        scene = self.sample(seed, num_objects=num_objects)
        template = random.Random(seed * 7919 + 1).randrange(len(self.templates[split]))
        image_HW3, masks_OHW = self.draw(scene)
        return Sample(scene, self.caption(scene, template, split), image_HW3, masks_OHW)

    def examples(
        self, n: int, seed: int = 0, split: Split = "train", num_objects: int | None = None
    ) -> Iterator[Sample]:
        """``n`` samples from consecutive per-scene seeds derived from ``seed``."""
        for i in range(n):
            yield self.example(seed * 1_000_003 + i, split=split, num_objects=num_objects)

    # ---- drawing --------------------------------------------------------------------------
    def object_mask(self, obj: SceneObject) -> Bool[np.ndarray, "H W"]:
        """Pixels covered by ``obj`` alone (before occlusion), from pixel-centre geometry."""
        n = self.resolution
        fx, fy = ANCHORS[obj.position]
        return shape_mask(obj.shape, fx * n + obj.offset[0], fy * n + obj.offset[1],
                          RADII[obj.size] * n, n)

    def draw(self, scene: Scene) -> tuple[UInt8[np.ndarray, "H W 3"], Bool[np.ndarray, "O H W"]]:
        """The RGB image and each object's visible mask (later objects occlude earlier ones)."""
        n = self.resolution
        image_HW3 = np.empty((n, n, 3), dtype=np.uint8)
        image_HW3[:] = BACKGROUNDS[scene.background]
        masks = [self.object_mask(obj) for obj in scene.objects]
        visible = []
        for i, mask_HW in enumerate(masks):
            covered_HW = np.zeros_like(mask_HW)
            for later_HW in masks[i + 1:]:
                covered_HW |= later_HW
            visible.append(mask_HW & ~covered_HW)
        for obj, mask_HW in zip(scene.objects, visible, strict=True):
            image_HW3[mask_HW] = PALETTE[obj.colour]
        return image_HW3, np.stack(visible)

    def render(self, scene: Scene) -> UInt8[np.ndarray, "H W 3"]:
        """The RGB image of ``scene``."""
        return self.draw(scene)[0]

    # ---- ground truth per token -----------------------------------------------------------
    def pixel_concepts(self, scene: Scene) -> tuple[tuple[str, ...], Bool[np.ndarray, "C H W"]]:
        """Per-pixel concept masks: ``object``, every factor value and ``background:<name>``."""
        _, masks_OHW = self.draw(scene)
        names = (("object",) + SHAPES + tuple(PALETTE) + POSITIONS + SIZES
                 + tuple(f"background:{b}" for b in BACKGROUNDS))
        index = {name: i for i, name in enumerate(names)}
        concepts_CHW = np.zeros((len(names),) + masks_OHW.shape[1:], dtype=bool)
        for obj, mask_HW in zip(scene.objects, masks_OHW, strict=True):
            for name in ("object", obj.shape, obj.colour, obj.position, obj.size):
                concepts_CHW[index[name]] |= mask_HW
        concepts_CHW[index[f"background:{scene.background}"]] = ~masks_OHW.any(0)
        return names, concepts_CHW

    def token_labels(self, scene: Scene) -> TokenLabels:
        """Fraction of pixels of each image token (``patch`` x ``patch`` pixels) per concept.

        Tokens are in the transformer's row-major order: token (i, j) covers pixel rows
        ``patch*i .. patch*(i+1)`` and columns ``patch*j .. patch*(j+1)``.
        """
        names, concepts_CHW = self.pixel_concepts(scene)
        c, n, p = len(names), self.resolution, self.patch
        blocks = concepts_CHW.reshape(c, n // p, p, n // p, p).astype(np.float64)
        fractions_Chw = blocks.mean(axis=(2, 4))
        return TokenLabels(names, np.ascontiguousarray(fractions_Chw.transpose(1, 2, 0)))

    # ---- vocabulary and prompt sets ------------------------------------------------------
    def vocabulary(self) -> tuple[str, ...]:
        """Every word a caption of this world can contain, in a fixed order."""
        words: dict[str, None] = {}
        factor_words = SHAPES + tuple(PALETTE) + tuple(BACKGROUNDS) + POSITIONS + SIZES
        texts = [t for group in self.templates.values() for t in group] + [PAIR_JOIN]
        for text in texts:
            for word in text.replace("{", " {").split():
                if not word.startswith("{"):
                    words.setdefault(word, None)
        for word in factor_words:
            words.setdefault(word, None)
        return tuple(words)


def missing_slots(caption: str) -> list[str]:
    """The slots of :data:`SLOTS` that ``caption`` leaves empty (none of the slot's words appears).

    Example:
        >>> missing_slots("a large red circle on the left")
        ['background']
    """
    words = set(re.findall(r"\w+", caption.lower()))
    return [slot for slot, fillers in SLOTS.items() if words.isdisjoint(fillers)]


def shape_mask(shape: str, cx: float, cy: float, r: float, n: int) -> Bool[np.ndarray, "H W"]:
    """Pixels of an ``n`` x ``n`` image whose centres fall inside ``shape`` centred at (cx, cy).

    ``r`` is the half-extent: circle radius; square half-side ``0.85 r``; upward isosceles
    triangle with apex at ``cy - r``, base at ``cy + r`` and base half-width ``r``.
    """
    ys, xs = np.mgrid[0:n, 0:n] + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        half = 0.85 * r
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        t = (dy + r) / (2 * r)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= r * t)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


#: Vertical offset of each shape's area centroid from its nominal centre, in units of r.
CENTROID_DY: dict[str, float] = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 3.0}


def prompts(
    n: int, seed: int = 0, split: Split = "train", world: World | None = None,
    num_objects: int | None = None,
) -> list[str]:
    """``n`` captions of world scenes (deterministic per ``seed``), for generation or caching.

    ``split="heldout"`` uses only the held-out templates.

    Example:
        >>> from sae_flux.organism.world import prompts
        >>> len(prompts(4, seed=0, split="heldout"))
        4
    """
    world = world or World()
    return [s.caption for s in world.examples(n, seed=seed, split=split, num_objects=num_objects)]

