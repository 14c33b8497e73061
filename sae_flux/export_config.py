"""The typed configuration of ``sae-flux export`` (:func:`sae_flux.export.export_matching_pursuit`).

Light (no torch, no sae_lens), so the CLI builds its parser from it at once.

Example:
    >>> ExportConfig(dictionary="runs/itda", out="runs/itda-mp").allow_approximate
    False
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExportConfig:
    """One export of an ITDA to sae_lens's ``matching_pursuit`` (CLI ``sae-flux export``)."""

    dictionary: str
    """ITDA dictionary: a directory or a Hub reference REPO_ID:FOLDER."""
    out: str
    """Output directory (cfg.json, sae_weights.safetensors, sparsity.safetensors)."""
    allow_approximate: bool = False
    """Export even when it cannot be exact (mean_std normalisation, gradient pursuit, screening)."""
    check_cache: str | None = None
    """Activation cache to compare the two on (atoms chosen, codes, reconstructions)."""
    tokens: int = 4096
    """Tokens of --check-cache compared (the first ones, in cache order)."""

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"--tokens must be >= 1, got {self.tokens}")
