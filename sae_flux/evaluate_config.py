"""The typed configuration of a dictionary evaluation (:func:`sae_flux.evaluate.evaluate_dictionary`).

The Python API and the ``sae-flux eval`` options; light (no torch, no sae_lens), so the CLI
builds its parser from it at once.

Example:
    >>> cfg = EvalConfig(dictionary="sae", cache="cache")
    >>> cfg.tokens, cfg.downstream_prompts
    (65536, 0)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    """One evaluation (the CLI ``sae-flux eval`` and the API)."""

    dictionary: str
    """Dictionary: a directory (cfg.json + sae_weights.safetensors) or a Hub reference REPO_ID:FOLDER; an SAE or ITDA."""
    cache: str | None = None
    """Activation cache to measure on (else stream from --model / --prompts)."""
    hook: str | None = None
    """Hook point (default: the dictionary's metadata.hook_name)."""
    model: str | None = None
    """Model for streaming and for the downstream metric: tiny, organism, repo id or directory."""
    prompts: str | None = None
    """Prompt file for streaming and for the downstream metric."""
    tokens: int = 65_536
    """Size of the metrics window (tokens, in data order)."""
    num_inference_steps: int | None = None
    """Denoising steps when streaming and for the downstream metric."""
    downstream_prompts: int = 0
    """Run the downstream metric on this many prompts (needs --model and --prompts; 0: skip)."""
    save: bool = False
    """Write metrics.json and sparsity.safetensors into the dictionary directory."""

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError("tokens must be >= 1")
        if self.cache is None and (self.model is None or self.prompts is None):
            raise ValueError("no evaluation data: give --cache DIR, or --model and --prompts")
        if self.downstream_prompts and (self.model is None or self.prompts is None):
            raise ValueError("the downstream metric needs --model and --prompts")
