"""The typed configuration of an activation-caching job (:func:`sae_flux.cache.write_cache`).

The Python API, the ``sae-flux cache`` options and the ``settings`` of a cache's manifest. It
imports nothing heavy, so the CLI builds its parser without torch.

Example:
    >>> cfg = CacheConfig(model="tiny", prompts="prompts.txt", hooks=["double.1.img"], out="cache")
    >>> cfg.dtype, cfg.batch_size, cfg.shard_prompts
    ('float32', 8, 64)
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPE_NAMES = ("float32", "bfloat16", "float16")
"""Storage dtypes of the activations (torch dtype names)."""


@dataclass
class CacheConfig:
    """One activation-caching job (the CLI ``sae-flux cache``, the API and the saved record)."""

    model: str
    """``tiny``, ``organism``, a diffusers repo id or a local pipeline directory."""
    prompts: str
    """Captions: a UTF-8 text file (one per line, blanks skipped), a .jsonl file, .parquet files,
    a datasets save_to_disk directory or webdataset .tar shards (see sae_flux.captions)."""
    hooks: list[str]
    """Hook points to cache, e.g. ``["double.18.img"]``."""
    out: str
    """Output directory."""
    num_inference_steps: int | None = None
    """Denoising steps per image (default: the model's)."""
    steps: list[int] | None = None
    """Which denoising steps to keep (default: all)."""
    seed: int = 0
    """Prompt ``j`` is generated from seed ``seed + j``."""
    resolution: int | None = None
    """Image height = width in pixels (default: the model's)."""
    dtype: str = "float32"
    """Storage dtype of the activations: float32, bfloat16 or float16."""
    batch_size: int = 8
    """Prompts per pipeline call."""
    shard_prompts: int = 64
    """Prompts per shard; bounds memory and the work lost to a crash."""
    caption_field: str = "caption"
    """Caption field of JSONL records, dataset / parquet columns and tar samples' .json."""
    limit: int | None = None
    """Keep a uniform random LIMIT of the captions, chosen by --seed, in source order (default: all)."""
    dedup: bool = False
    """Drop captions equal to an earlier one."""
    tokens_per_image: int | None = None
    """Keep this many image tokens per image per kept step, chosen by --seed (default: all)."""

    def __post_init__(self) -> None:
        if not self.hooks:
            raise ValueError("CacheConfig.hooks is empty: name at least one hook point")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPE_NAMES)}")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels, got {self.resolution}")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.steps is not None and (not self.steps or min(self.steps) < 0):
            raise ValueError(f"steps must be denoising step indices >= 0, got {self.steps}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.tokens_per_image is not None and self.tokens_per_image < 1:
            raise ValueError(f"tokens_per_image must be >= 1, got {self.tokens_per_image}")
        if self.batch_size < 1 or self.shard_prompts < 1:
            raise ValueError("batch_size and shard_prompts must be >= 1")
        if self.shard_prompts % self.batch_size:
            raise ValueError(
                f"shard_prompts ({self.shard_prompts}) must be a multiple of batch_size "
                f"({self.batch_size}) so that every shard is made of whole batches"
            )
