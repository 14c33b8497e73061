"""The typed configuration of the main job (:func:`sae_flux.demo.run_demo`, ``sae-flux demo``).

Light (no torch), so the CLI builds its parser from it at once.

Example:
    >>> cfg = DemoConfig(out="demo-out", n_prompts=64)
    >>> cfg.model, cfg.sae_k, cfg.itda_l0
    ('organism', 8, 32)
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
    """Prompts drawn from the scene world (training templates); sizes the whole demo: cache, SAE size and tokens, held-out images, steering targets and feature cards (the report's Sizes)."""
    step: int = 0
    """Denoising step whose activations are cached (0 = from pure noise, as in the paper)."""
    sae_k: int = 8
    """Active latents per token of the TopK SAE."""
    sae_expansion: int | None = None
    """SAE latents per model dimension (default: one latent per 64 cache tokens, 2 to 8)."""
    sae_tokens: int | None = None
    """SAE training tokens (default: 16 passes over the cache, the most any run makes)."""
    itda_l0: int = 32
    """ITDA target L0 (the Flux recipe of Shabalin et al. 2025: 32 or 64, non-negative gradient pursuit)."""
    itda_threshold: float = 0.6
    """ITDA loss threshold (the Flux recipe's 0.6; lower -> larger dictionary)."""
    itda_batch: int = 256
    """Tokens per ITDA build batch: a batch's badly reconstructed tokens are added at once, so the atom count grows with it (recorded in the dictionary's cfg.json as itda_build.batch_tokens)."""
    seed: int = 0
    """Seed of prompts, generation and training."""
    threads: int = 1
    """torch threads while the demo runs (0: torch's default, one per core). The organism's operations are small; on cores shared with other jobs two threads made the quick demo's stages 4.5x slower."""

    def __post_init__(self) -> None:
        if self.n_prompts < 8:
            raise ValueError(f"n_prompts must be >= 8, got {self.n_prompts}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
