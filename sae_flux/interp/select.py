"""The example-selection rule and feature cards of Shabalin et al. 2025 (arXiv 2505.24360).

Step 2 of their pipeline (``../shared/research.md`` s.1): rank a feature's images by peak
activation, keep an image only if at least ``min_tokens`` of its tokens exceed a threshold
(the paper: 6 of 256), and take the top 5. Step 3 renders each kept image with its upsampled
activation map (:func:`sae_flux.interp.render.overlay`, alpha = sqrt of the normalised
activation) and a colour bar, side by side.

Legend: I = selected images, h/w = token rows/columns.

Example:
    >>> index = IndexReader("idx-sae")  # doctest: +SKIP
    >>> chosen = select(index, feature=7, cfg=SelectConfig(min_tokens=2))  # doctest: +SKIP
    >>> render_card(index, chosen).save("feature-7.png")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float
from PIL import Image, ImageDraw
from torch import Tensor

from sae_flux.interp.config import SelectConfig
from sae_flux.interp.index import IndexReader
from sae_flux.interp.render import overlay, strip


class Selection(NamedTuple):
    """A feature's chosen images (best first) with their token maps."""

    feature: int
    images: list[int]
    peaks: Float[Tensor, " I"]
    maps_IHW: Float[Tensor, "I h w"]


def select(index: IndexReader, feature: int, cfg: SelectConfig | None = None) -> Selection:
    """The paper's rule: by peak, images with >= ``min_tokens`` tokens over threshold, top ``n_images``."""
    cfg = cfg or SelectConfig()
    peaks, images = index.top_images(feature)
    if len(images) == 0:
        return Selection(feature, [], torch.zeros(0), torch.zeros(0, *index.grid))
    maps_IHW = index.maps(feature, images)
    level = cfg.threshold * float(index.top["max_F"][feature])
    spread = (maps_IHW.flatten(1) > level).sum(1)
    keep = torch.nonzero(spread >= cfg.min_tokens).flatten()[: cfg.n_images]
    return Selection(feature, images[keep].tolist(), peaks[keep], maps_IHW[keep])


def render_card(
    index: IndexReader, selection: Selection, scale: int = 4, title: str = ""
) -> Image.Image:
    """The selected images with their heatmaps (one shared colour scale) and a title line."""
    if not selection.images:
        raise ValueError(f"feature {selection.feature} has no selected images to render")
    vmax = float(selection.peaks.max())
    pictures = [
        overlay(index.load_image(image), map_HW, vmax=vmax, scale=scale, colorbar=i == len(selection.images) - 1)
        for i, (image, map_HW) in enumerate(zip(selection.images, selection.maps_IHW, strict=True))
    ]
    row = strip(pictures)
    if not title:
        return row
    card = Image.new("RGB", (row.width, row.height + 14), "white")
    card.paste(row, (0, 14))
    ImageDraw.Draw(card).text((2, 1), title, fill="black")
    return card


def plain_images(index: IndexReader, images: list[int], scale: int = 4) -> list[Image.Image]:
    """Images without heatmaps (what the detection scorer is shown)."""
    out = []
    for image in images:
        pixels = (index.load_image(image).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        picture = Image.fromarray(pixels)
        out.append(picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST))
    return out
