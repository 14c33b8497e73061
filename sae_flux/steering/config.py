"""The typed configuration of a steering grid (:func:`sae_flux.steering.grid.run_steer`).

The Python API, the ``sae-flux steer`` options and the ``<out>.json`` record; light (no
torch), so the CLI builds its parser from it at once.

Example:
    >>> cfg = SteerConfig(dictionary="sae", features=[12], prompts=["a small red circle"])
    >>> cfg.mode, cfg.scales
    ('add', [0.0, 0.4, 0.8, 1.6])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MODES = ("add", "clamp")
"""How the features steer: activation addition, or clamping the encoded features."""


@dataclass
class SteerConfig:
    """A steering grid (``sae-flux steer``); saved next to the PNG as ``<out>.json``."""

    dictionary: str
    """Dictionary: a directory or a Hub reference REPO_ID:FOLDER; any sae_lens SAE, or an ITDA."""
    features: list[int]
    """Feature ids steered together."""
    prompts: list[str]
    """Prompts, one grid row each."""
    out: str = "steer.png"
    """Output PNG."""
    model: str = "organism"
    """organism, tiny, a repo id or a pipeline directory."""
    hook: str | None = None
    """Image stream to edit (default: the dictionary's hook_name)."""
    scales: list[float] = field(default_factory=lambda: [0.0, 0.4, 0.8, 1.6])
    """One grid column each: multiples of the mean token norm (add), absolute norms (--absolute), or values (clamp)."""
    mode: str = "add"
    """add (activation addition) or clamp (set the encoded features to each scale)."""
    absolute: bool = False
    """add: scales are absolute norms instead of multiples of the mean token norm."""
    region: list[int] | None = None
    """Token box row0 col0 row1 col1 (end exclusive); default the whole grid."""
    first_steps: int | None = None
    """Edit the first N denoising steps (default: round(5/7 of the schedule), the paper's 5 of 7)."""
    seed: int = 0
    """Generation seed (prompt i uses seed + i)."""
    cell: int = 96
    """Pixel size of each grid cell."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}")
        if not self.features or not self.prompts or not self.scales:
            raise ValueError("steer needs at least one feature, one prompt and one scale")
        bad = [s for s in self.scales if not math.isfinite(s)]
        if bad:
            raise ValueError(f"steering scales must be finite numbers, got {bad}")
        if self.region is not None and len(self.region) != 4:
            raise ValueError(f"region must be four ints row0 col0 row1 col1, got {self.region}")
        if self.first_steps is not None and self.first_steps < 1:
            raise ValueError(f"first_steps must be >= 1, got {self.first_steps}")
