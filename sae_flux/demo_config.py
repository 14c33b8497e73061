"""The typed configuration of the main job (:func:`sae_flux.demo.run_demo`, ``sae-flux demo``).

Light (no torch), so the CLI builds its parser from it at once.

Example:
    >>> cfg = DemoConfig(out="demo-out", n_prompts=64)
    >>> cfg.model, cfg.sae_k, cfg.itda_l0
    ('organism', 8, 8)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DemoConfig:
    """The main job (``sae-flux demo``); saved as ``demo_config.json`` in the output."""

    out: str = "demo-out"
    """Output directory (refused if it exists, unless --overwrite)."""
    overwrite: bool = False
    """Replace an existing output directory."""
    model: str = "organism"
    """organism, tiny, a repo id or a pipeline directory."""
    hook: str | None = None
    """Hook point (default: the image stream of the middle double block)."""
    n_prompts: int = 1024
    """Prompts drawn from the scene world (training templates)."""
    step: int = 0
    """Denoising step whose activations are cached (0 = from pure noise, as in the paper)."""
    sae_k: int = 8
    """Active latents per token of the TopK SAE."""
    sae_expansion: int = 8
    """SAE latents per model dimension."""
    sae_tokens: int = 1_000_000
    """SAE training tokens."""
    itda_l0: int = 8
    """ITDA target L0."""
    itda_threshold: float = 0.3
    """ITDA loss threshold (lower -> larger dictionary)."""
    seed: int = 0
    """Seed of prompts, generation and training."""

    def __post_init__(self) -> None:
        if self.n_prompts < 8:
            raise ValueError(f"n_prompts must be >= 8, got {self.n_prompts}")
