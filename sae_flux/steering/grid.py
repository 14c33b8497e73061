"""``sae-flux steer``: a grid PNG of prompts x steering scales (Shabalin et al. 2025, arXiv 2505.24360).

Rows are prompts, columns scales; the scale-0 column is the unsteered image (bit for bit).
``--mode add`` adds the unit decoder direction (scales relative to the mean token norm unless
``--absolute``), ``--mode clamp`` clamps the features to each column's value.

Legend: P prompts, S scales, H/W pixel rows/cols.

Example:
    $ sae-flux steer --dictionary demo-out/dictionaries/sae-topk --features 12 \\
        --prompts "a small red circle at the left" --scales 0 0.8 1.6 --out steer.png
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from torch import Tensor

import _sae_flux_shared.commit as commit
from sae_flux.steer import Edit, add_feature, clamp, steering
from sae_flux.steering.config import SteerConfig

logger = logging.getLogger(__name__)


def default_steps(n_steps: int) -> int:
    """The paper's 5 of 7 steps, scaled to the schedule."""
    return max(1, round(n_steps * 5 / 7))


def edits_for(cfg: SteerConfig, dictionary: Any, scale: float, n_steps: int) -> list[Edit]:
    first = cfg.first_steps or default_steps(n_steps)
    if first > n_steps:
        raise ValueError(f"first_steps={first} is beyond the schedule of {n_steps} steps")
    region = tuple(cfg.region) if cfg.region is not None else None
    if cfg.mode == "clamp":
        return [clamp(dictionary, f, scale, region, range(first)) for f in cfg.features]  # type: ignore[arg-type]
    return [add_feature(dictionary, f, scale, not cfg.absolute, region, range(first)) for f in cfg.features]  # type: ignore[arg-type]


def grid_image(
    images_PS: Sequence[Sequence[Tensor]], column_labels: Sequence[str], cell: int = 96,
    row_labels: Sequence[str] = (), corner: str = "",
) -> Image.Image:
    """Images (rows of [3, H, W] tensors in [0, 1]) tiled under a header row of column labels.

    A label may hold several lines (``"sae-topk\\nx0.8"``); ``row_labels`` are written in a left
    margin and ``corner`` above them (for example what the rows and columns are).
    """
    rows, cols = len(images_PS), len(images_PS[0])
    lines = max([label.count("\n") + 1 for label in column_labels] + [corner.count("\n") + 1])
    header = 3 + 11 * lines
    margin = 6 + 6 * max([len(label) for label in row_labels] + [len(line) for line in corner.split("\n")]) \
        if row_labels else 0
    canvas = Image.new("RGB", (margin + cols * cell, header + rows * cell), "white")
    draw = ImageDraw.Draw(canvas)
    if row_labels:
        draw.multiline_text((3, 1), corner, fill="black", spacing=0)
    for j, label in enumerate(column_labels):
        draw.multiline_text((margin + j * cell + 3, 1), label, fill="black", spacing=0)
    for i, row in enumerate(images_PS):
        if i < len(row_labels):
            draw.text((3, header + i * cell + cell // 2 - 5), row_labels[i], fill="black")
        for j, img in enumerate(row):
            array = (img.clamp(0, 1).permute(1, 2, 0).float().numpy() * 255).round().astype("uint8")
            tile = Image.fromarray(array).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (margin + j * cell, header + i * cell))
    return canvas


def steer_images(flux: Any, cfg: SteerConfig, dictionary: Any) -> list[list[Tensor]]:
    """Images as rows (prompts) x columns (scales)."""
    hook = cfg.hook or dictionary.cfg.metadata.hook_name
    n_steps = flux.defaults.num_inference_steps
    columns = []
    for scale in cfg.scales:
        with steering(flux, hook, edits_for(cfg, dictionary, scale, n_steps)):
            columns.append(flux.generate(cfg.prompts, seed=cfg.seed))
    return [[col[i] for col in columns] for i in range(len(cfg.prompts))]


def run_steer(cfg: SteerConfig, flux: Any = None) -> Path:
    """Write the grid PNG (and its config as JSON) and return the PNG path."""
    from sae_flux.cache import load_flux
    from sae_flux.dictionary import load_dictionary

    dictionary = load_dictionary(cfg.dictionary)
    flux = flux or load_flux(cfg.model)
    if cfg.hook is None and not getattr(dictionary.cfg.metadata, "hook_name", None):
        raise ValueError("the dictionary names no hook_name: pass --hook")
    rows = steer_images(flux, cfg, dictionary)
    prefix = "" if cfg.mode == "clamp" else ("|" if cfg.absolute else "x")
    image = grid_image(rows, [f"{prefix}{s:g}" for s in cfg.scales], cfg.cell)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    commit.write_with(out, lambda tmp: image.save(tmp, format="PNG"))  # committed, then its record
    commit.write_json(out.with_suffix(".json"), asdict(cfg), indent=2)
    logger.info("wrote %s (%d prompts x %d scales)", out, len(cfg.prompts), len(cfg.scales))
    return out
