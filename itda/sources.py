"""Activation streams for ITDA construction (Leask et al., ICML 2025, arXiv 2505.17769).

Two sources feed ``itda.build``, each keeping the provenance the paper's Jaccard comparison
needs:

- a Flux activation cache written by ``sae-flux cache`` (``sae_flux.cache.CacheReader``): rows in
  cache order, provenance (prompt, step, timestep, h, w) or (prompt, token) per row;
- a Hugging Face causal LM wrapped in ``nnsight.LanguageModel``: the residual stream output of
  decoder layer ``layer``, read inside an nnsight trace, padding tokens dropped, provenance
  (prompt index, token position).

Shape legend: B texts in a batch, S sequence positions, N tokens, D model width.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cae.model import block_output, decoder_layers
from itda.build import ActivationBatch, BuildConfig, BuildState, build
from itda.build_config import STREAM_KEY
from itda.model import ITDA

logger = logging.getLogger(__name__)


def cache_batches(
    path: str | Path, hook: str | None = None, batch_size: int = 4096
) -> tuple[Iterator[ActivationBatch], dict[str, Any]]:
    """In-order batches of a Flux activation cache and the SAELens metadata it implies."""
    from sae_flux.cache import CacheReader

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


def stream_settings(meta: dict[str, Any], source: str, batch_size: int) -> dict[str, Any]:
    """What identifies a stream for a resume: model, hook, source and batch size."""
    return {"model_name": meta.get("model_name", ""), "hook_name": meta.get("hook_name", ""),
            "source": source, "batch_size": batch_size}


def skip_seen(
    batches: Iterator[ActivationBatch], resume: ITDA | BuildState | None
) -> Iterator[ActivationBatch]:
    """Drop the batches a resumed build has already consumed (same batch size, compared on resume)."""
    if resume is None:
        return batches
    if isinstance(resume, BuildState):
        seen = resume.batches_seen
    else:
        seen = int((resume.cfg.metadata.get("itda_build", {}) or {}).get("batches_seen", 0))
    return itertools.islice(batches, seen, None)


def lm_layers(model: Any) -> Any:
    """The decoder-layer list of an nnsight-wrapped HF causal LM, found by the project's one
    layer finder (:func:`cae.model.decoder_layers`) and addressed on the nnsight model."""
    path, _ = decoder_layers(model)
    node = model
    for name in path.split("."):
        node = getattr(node, name)
    return node


def lm_batches(
    model: Any,
    texts: Sequence[str],
    layer: int,
    batch_size: int = 8,
    max_length: int = 256,
    source: str = "texts",
) -> Iterator[ActivationBatch]:
    """Residual-stream activations after decoder layer ``layer``, one batch per text batch."""
    n_layers = len(lm_layers(model))
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range: the model has {n_layers} decoder layers")
    hook = f"layers.{layer}.output"
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        enc = model.tokenizer(
            chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_length
        )
        acts_BSD = _residual(model, enc, layer)
        keep_BS = enc["attention_mask"].bool()
        prompt_BS = torch.arange(start, start + len(chunk))[:, None].expand_as(keep_BS)
        token_BS = _positions(keep_BS)
        yield ActivationBatch(
            acts_BSD[keep_BS].float(),
            {"prompt": prompt_BS[keep_BS], "token": token_BS[keep_BS]},
            hook,
            source,
        )


def _positions(keep_BS: Tensor) -> Tensor:
    """Token index within each text, counting only real (non-padding) tokens."""
    return (keep_BS.long().cumsum(dim=1) - 1).clamp(min=0)


def _residual(model: Any, enc: Any, layer: int) -> Tensor:
    import nnsight

    layers = lm_layers(model)
    with torch.no_grad(), model.trace(dict(enc)):
        saved = nnsight.save(block_output(layers[layer].output))
    return saved.detach().cpu()


def lm_stream(
    model: Any, texts: Sequence[str], layer: int, batch_size: int = 8, max_length: int = 256,
    source: str = "texts",
) -> tuple[Iterator[ActivationBatch], dict[str, Any]]:
    """Batches of an LM's residual stream (:func:`lm_batches`) and the SAELens metadata they imply."""
    if not texts:
        raise ValueError("empty activation stream: no texts were given")
    model_name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    meta: dict[str, Any] = {"model_name": model_name, "hook_name": f"layers.{layer}.output"}
    meta[STREAM_KEY] = stream_settings(meta, source, batch_size) | {"max_length": max_length}
    return lm_batches(model, texts, layer, batch_size, max_length, source), meta


def build_from_lm(
    model: Any,
    texts: Sequence[str],
    layer: int,
    config: BuildConfig | None = None,
    *,
    batch_size: int = 8,
    max_length: int = 256,
    source: str = "texts",
    resume: ITDA | BuildState | None = None,
    progress: bool = True,
) -> ITDA:
    """Build an ITDA on a Hugging Face LM's residual stream through nnsight.

    Example:
        >>> import nnsight
        >>> lm = nnsight.LanguageModel("gpt2", dispatch=True)  # doctest: +SKIP
        >>> d = build_from_lm(lm, texts, layer=6, config=BuildConfig(target_l0=32))  # doctest: +SKIP
        >>> d.describe(0)  # doctest: +SKIP
        AtomSource(source='texts', prompt=..., token=..., hook='layers.6.output')
    """
    batches, meta = lm_stream(model, texts, layer, batch_size, max_length, source)
    return build(skip_seen(batches, resume), config or BuildConfig(), resume=resume, progress=progress,
                 metadata=meta)
