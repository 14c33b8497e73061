"""ITDA dictionaries from Flux activation caches: the cache-batch source of ``itda build --cache``.

``itda.build`` reads a plain iterator of :class:`itda.build.ActivationBatch`; this module turns a
cache written by ``sae-flux cache`` (:class:`sae_flux.cache.CacheReader`) into one: rows in
cache order, provenance (prompt, step, timestep, h, w) or (prompt, token) per row, as the
paper's Jaccard comparison needs (Leask et al., ICML 2025, arXiv 2505.17769). It sits in
``sae_flux`` because it reads ``sae_flux``'s cache format; ``itda`` imports nothing of
``sae_flux``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from itda.build import ActivationBatch, BuildConfig, BuildState, build
from itda.build_config import STREAM_KEY
from itda.model import ITDA
from itda.sources import skip_seen, stream_settings
from sae_flux.cache import CacheReader

logger = logging.getLogger(__name__)


def cache_batches(
    path: str | Path, hook: str | None = None, batch_size: int = 4096
) -> tuple[Iterator[ActivationBatch], dict[str, Any]]:
    """In-order batches of a Flux activation cache and the SAELens metadata it implies.

    Example:
        >>> batches, meta = cache_batches("cache", "double.1.img", 256)  # doctest: +SKIP
        >>> meta["hook_name"], next(batches).acts_ND.shape  # doctest: +SKIP
        ('double.1.img', torch.Size([256, 64]))
    """
    reader = CacheReader(path, hook=hook)
    settings = reader.manifest.settings
    source = str(settings.get("prompt_hash") or Path(path).name)
    meta: dict[str, Any] = {"model_name": reader.manifest.model_id, "hook_name": reader.hook,
                            "dataset_path": f"activation cache {path} ({reader.manifest.tokens(reader.hook)} tokens)"}
    meta[STREAM_KEY] = stream_settings(meta, source, batch_size)

    chunks = reader.in_order(batch_size)  # warns when the cache is smaller than one batch
    batches = (ActivationBatch(acts_ND, prov, reader.hook, source) for acts_ND, prov in chunks)
    return batches, meta


def build_from_cache(
    path: str | Path,
    config: BuildConfig | None = None,
    *,
    hook: str | None = None,
    batch_size: int = 4096,
    resume: ITDA | BuildState | None = None,
    progress: bool = True,
    checkpoint: Callable[[BuildState], object] | None = None,
    checkpoint_every: int = 0,
    sparsity_tokens: int = 65_536,
) -> ITDA:
    """Build an ITDA from a Flux activation cache (``sae-flux cache``), in cache order.

    Then measure every atom's firing rate on the first ``sparsity_tokens`` tokens of the same
    cache, in the same order (``itda.sparsity``; saved as ``sparsity.safetensors``; 0: skip).

    Example:
        >>> config = BuildConfig(target_l0=32, loss_threshold=0.3)
        >>> d = build_from_cache("cache", config)  # doctest: +SKIP
        >>> d.describe(0)  # doctest: +SKIP
        AtomSource(source='sha256:...', prompt=0, step=0, h=3, w=5, ...)
    """
    batches, meta = cache_batches(path, hook, batch_size)
    itda = build(skip_seen(batches, resume), config or BuildConfig(), resume=resume, progress=progress,
                 metadata=meta, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    measure_cache_firing(itda, path, hook, batch_size, sparsity_tokens)
    return itda


def measure_cache_firing(itda: ITDA, path: str | Path, hook: str | None, batch_size: int,
                         sparsity_tokens: int) -> None:
    """Measure the atoms' firing rates on the first ``sparsity_tokens`` of the build cache (0: not at all)."""
    if sparsity_tokens <= 0:
        return
    again, _ = cache_batches(path, hook, batch_size)
    rates = itda.measure_firing_rates(
        (b.acts_ND for b in again), sparsity_tokens,
        data=f"build data: the first tokens of cache {Path(path).name}, in cache order")
    logger.info("firing rates measured on %d build tokens", rates.tokens)


