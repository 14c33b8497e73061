"""A pixel-level judge for the scene world: read an object's factors back from an image.

No learned model: the world's known palette and geometry (``sae_flux.organism.world``) are the
judge. Every pixel is given the nearest palette or background colour (or none, when it is far
from all of them, as blended edge pixels are); each colour's largest 4-connected region is an
object candidate; its shape kind and size are the world template (``shape_mask``) with the
highest intersection-over-union at the region's centroid, and its position is the anchor nearest
the fitted centre. The IoU is the judge's confidence. The main object is the largest region.

Legend: H/W = pixel rows/columns.

Example:
    >>> from sae_flux.organism.world import World
    >>> from sae_flux.organism.judge import judge
    >>> world = World()
    >>> sample = world.example(seed=0, num_objects=1)
    >>> verdict = judge(sample.image_HW3)
    >>> (verdict.colour, verdict.shape) == (sample.scene.main.colour, sample.scene.main.shape)
    True
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from jaxtyping import Bool, Shaped

from sae_flux.organism.world import (
    ANCHORS,
    BACKGROUNDS,
    CENTROID_DY,
    PALETTE,
    RADII,
    SHAPES,
    SIZES,
    Scene,
    shape_mask,
)

ATTRIBUTES: tuple[str, ...] = ("colour", "shape", "position", "size")


class Verdict(NamedTuple):
    """What the judge sees of one object (``found`` False: no object in the image)."""

    found: bool
    colour: str | None = None
    shape: str | None = None
    position: str | None = None
    size: str | None = None
    background: str | None = None
    confidence: float = 0.0
    """IoU of the object's region with the best-fitting world template, in [0, 1]."""
    area: int = 0
    """Pixels in the object's region."""


@dataclass
class JudgeConfig:
    """Thresholds of the judge."""

    max_colour_distance: float = 80.0
    """A pixel further than this (RGB Euclidean) from every palette colour is unlabelled."""
    min_pixels: int = 6
    """Smallest region counted as an object."""
    search: float = 1.0
    """Template centres are searched within +- this many pixels (steps of 0.5)."""

    def __post_init__(self) -> None:
        if self.max_colour_distance <= 0 or self.min_pixels < 1 or self.search < 0:
            raise ValueError("max_colour_distance > 0, min_pixels >= 1 and search >= 0 required")


def to_uint8(image: Shaped[np.ndarray, "H W 3"]) -> np.ndarray:
    """An RGB array as uint8 (floats in [0, 1] are scaled); PIL images are accepted too."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return array


def background_of(image_HW3: np.ndarray) -> str:
    """The background colour nearest the median border pixel."""
    border = np.concatenate([image_HW3[0], image_HW3[-1], image_HW3[:, 0], image_HW3[:, -1]])
    median = np.median(border.astype(np.float64), axis=0)
    return min(BACKGROUNDS, key=lambda b: float(np.linalg.norm(median - BACKGROUNDS[b])))


def colour_labels(image_HW3: np.ndarray, background: str, cfg: JudgeConfig) -> np.ndarray:
    """Index into ``PALETTE`` per pixel; -1 for background or unlabelled pixels."""
    colours = np.array(list(PALETTE.values()) + [BACKGROUNDS[background]], dtype=np.float64)
    dist_HWK = np.linalg.norm(image_HW3[:, :, None, :].astype(np.float64) - colours, axis=-1)
    labels_HW = dist_HWK.argmin(-1)
    labels_HW[dist_HWK.min(-1) > cfg.max_colour_distance] = -1
    labels_HW[labels_HW == len(PALETTE)] = -1
    return labels_HW


def largest_region(mask_HW: Bool[np.ndarray, "H W"]) -> Bool[np.ndarray, "H W"]:
    """The largest 4-connected region of ``mask_HW``."""
    seen = np.zeros_like(mask_HW)
    best = np.zeros_like(mask_HW)
    h, w = mask_HW.shape
    for y0, x0 in zip(*np.nonzero(mask_HW), strict=True):
        if seen[y0, x0]:
            continue
        region = np.zeros_like(mask_HW)
        queue = deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            region[y, x] = True
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask_HW[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if region.sum() > best.sum():
            best = region
    return best


def fit_template(region_HW: Bool[np.ndarray, "H W"], cfg: JudgeConfig) -> tuple[str, str, str, float]:
    """Shape kind, size, position and IoU of the world template that best matches a region."""
    n = region_HW.shape[0]
    ys, xs = np.nonzero(region_HW)
    mx, my = xs.mean() + 0.5, ys.mean() + 0.5
    shifts = np.arange(-cfg.search, cfg.search + 1e-9, 0.5)
    best = ("circle", "small", (mx, my), -1.0)
    for shape in SHAPES:
        for size in SIZES:
            r = RADII[size] * n
            for sx in shifts:
                for sy in shifts:
                    cx, cy = mx + sx, my - CENTROID_DY[shape] * r + sy
                    template_HW = shape_mask(shape, cx, cy, r, n)
                    union = (template_HW | region_HW).sum()
                    iou = float((template_HW & region_HW).sum() / union) if union else 0.0
                    if iou > best[3]:
                        best = (shape, size, (cx, cy), iou)
    shape, size, (cx, cy), iou = best
    position = min(ANCHORS, key=lambda p: (cx - ANCHORS[p][0] * n) ** 2
                   + (cy - ANCHORS[p][1] * n) ** 2)
    return shape, size, position, iou


def judge_objects(image: Shaped[np.ndarray, "H W 3"], cfg: JudgeConfig | None = None) -> list[Verdict]:
    """Every object the judge finds (one per palette colour), largest first."""
    cfg = cfg or JudgeConfig()
    image_HW3 = to_uint8(image)
    background = background_of(image_HW3)
    labels_HW = colour_labels(image_HW3, background, cfg)
    verdicts = []
    for k, colour in enumerate(PALETTE):
        mask_HW = labels_HW == k
        if mask_HW.sum() < cfg.min_pixels:
            continue
        region_HW = largest_region(mask_HW)
        if region_HW.sum() < cfg.min_pixels:
            continue
        shape, size, position, iou = fit_template(region_HW, cfg)
        verdicts.append(Verdict(True, colour, shape, position, size, background, iou,
                                int(region_HW.sum())))
    return sorted(verdicts, key=lambda v: -v.area)


def judge(image: Shaped[np.ndarray, "H W 3"], cfg: JudgeConfig | None = None) -> Verdict:
    """The main (largest) object of ``image``, or ``Verdict(found=False)`` if there is none.

    Example:
        >>> import numpy as np
        >>> judge(np.zeros((32, 32, 3), dtype=np.uint8)).found
        False
    """
    verdicts = judge_objects(image, cfg)
    if verdicts:
        return verdicts[0]
    return Verdict(False, background=background_of(to_uint8(image)))


def accuracy(verdicts: Sequence[Verdict], scenes: Sequence[Scene]) -> dict[str, float]:
    """Per-attribute accuracy of ``verdicts`` against each scene's main object (and ``found``)."""
    if len(verdicts) != len(scenes) or not scenes:
        raise ValueError(f"need as many verdicts as scenes (> 0), got {len(verdicts)} and {len(scenes)}")
    scores = {a: 0 for a in ATTRIBUTES} | {"background": 0, "found": 0}
    for verdict, scene in zip(verdicts, scenes, strict=True):
        truth = {a: getattr(scene.main, a) for a in ATTRIBUTES} | {"background": scene.background}
        scores["found"] += verdict.found
        for name, value in truth.items():
            scores[name] += getattr(verdict, name) == value
    return {name: count / len(scenes) for name, count in scores.items()}
