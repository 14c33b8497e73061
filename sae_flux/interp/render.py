"""Activation heatmaps over generated images, as in the visual pipeline of Shabalin et al. 2025.

Step 3 of their auto-interpretation pipeline (arXiv 2505.24360, ``../shared/research.md`` s.1):
the decoded image with the token-grid activation map upsampled and overlaid, the overlay's
alpha growing with the square root of the normalised activation, plus a colour bar. The alpha
stops at :data:`MAX_ALPHA`, so the image stays visible under the strongest activation, and the
colour bar is labelled (``activation``, its maximum, half of it and 0).

:func:`spotlight` is the other way of showing a region, used by the fuzzing score
(:mod:`sae_flux.interp.score`): the pixels outside a token mask are darkened.

Example:
    >>> import torch
    >>> image = torch.rand(3, 32, 32)
    >>> heat = torch.zeros(8, 8); heat[2, 5] = 1.0
    >>> card = overlay(image, heat, scale=4)        # a PIL image, 128 px + colour bar
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from jaxtyping import Bool, Float
from PIL import Image, ImageDraw
from torch import Tensor

BAR_WIDTH = 14
LABEL_WIDTH = 40
#: Largest heatmap opacity: at the feature's maximum, 35% of the image still shows through.
MAX_ALPHA = 0.65
#: Brightness kept outside a spotlit region.
DIM = 0.3


def heat_alpha(act_map_HW: Float[Tensor, "h w"], vmax: float | None = None) -> Float[Tensor, "h w"]:
    """Normalised activation in [0, 1] (negative values count as 0), divided by ``vmax``."""
    act = act_map_HW.float().clamp(min=0)
    top = float(act.max()) if vmax is None else float(vmax)
    return (act / top).clamp(0, 1) if top > 0 else torch.zeros_like(act)


def upsample(map_HW: Float[Tensor, "h w"], size: tuple[int, int]) -> Float[Tensor, "H W"]:
    """Nearest-neighbour upsampling of a token-grid map to pixel size (tokens stay crisp squares)."""
    return torch.nn.functional.interpolate(map_HW[None, None].float(), size=size, mode="nearest")[0, 0]


def overlay(
    image_3HW: Float[Tensor, "3 H W"],
    act_map_hw: Float[Tensor, "h w"],
    vmax: float | None = None,
    scale: int = 4,
    cmap: str = "inferno",
    colorbar: bool = True,
) -> Image.Image:
    """The image with the activation map blended on top (alpha = MAX_ALPHA x sqrt of normalised activation)."""
    height, width = image_3HW.shape[-2:]
    norm = upsample(heat_alpha(act_map_hw, vmax), (height, width))
    colours = torch.from_numpy(matplotlib.colormaps[cmap](norm.numpy())[..., :3]).float()
    alpha = MAX_ALPHA * norm.sqrt()[..., None]
    base = image_3HW.float().clamp(0, 1).permute(1, 2, 0)
    blended = (1 - alpha) * base + alpha * colours
    pixels = (blended.numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(pixels).resize((width * scale, height * scale), Image.Resampling.NEAREST)
    if not colorbar:
        return picture
    top = float(act_map_hw.clamp(min=0).max()) if vmax is None else float(vmax)
    return _with_colorbar(picture, top, cmap)


def _with_colorbar(picture: Image.Image, vmax: float, cmap: str) -> Image.Image:
    """The picture with a colour bar labelled ``activation`` and ticks at vmax, vmax / 2 and 0."""
    title = 11
    height = picture.height
    ramp = np.linspace(1, 0, height)[:, None].repeat(BAR_WIDTH, axis=1)
    bar = (matplotlib.colormaps[cmap](ramp)[..., :3] * 255).astype(np.uint8)
    canvas = Image.new("RGB", (picture.width + 4 + BAR_WIDTH + LABEL_WIDTH, height + title), "white")
    canvas.paste(picture, (0, title))
    canvas.paste(Image.fromarray(bar), (picture.width + 4, title))
    draw = ImageDraw.Draw(canvas)
    draw.text((picture.width + 4, 0), "activation", fill="black")
    x = picture.width + 6 + BAR_WIDTH
    draw.text((x, title), f"{vmax:.3g}", fill="black")
    if height >= 48:
        draw.text((x, title + height // 2 - 5), f"{vmax / 2:.3g}", fill="black")
    draw.text((x, title + height - 11), "0", fill="black")
    return canvas


def spotlight(
    image_3HW: Float[Tensor, "3 H W"], mask_hw: Bool[Tensor, "h w"], scale: int = 4, dim: float = DIM,
) -> Image.Image:
    """The image with every pixel outside the token mask darkened to ``dim`` of its brightness."""
    height, width = image_3HW.shape[-2:]
    inside = upsample(mask_hw.float(), (height, width))[..., None]
    base = image_3HW.float().clamp(0, 1).permute(1, 2, 0)
    lit = base * (inside + (1 - inside) * dim)
    pixels = (lit.numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(pixels).resize((width * scale, height * scale), Image.Resampling.NEAREST)


def strip(pictures: Sequence[Image.Image], gap: int = 4) -> Image.Image:
    """Pictures side by side on a white background, bottom-aligned (a feature card's top-image row)."""
    if not pictures:
        raise ValueError("strip needs at least one picture")
    width = sum(p.width for p in pictures) + gap * (len(pictures) - 1)
    height = max(p.height for p in pictures)
    canvas = Image.new("RGB", (width, height), "white")
    x = 0
    for picture in pictures:
        canvas.paste(picture, (x, height - picture.height))
        x += picture.width + gap
    return canvas
