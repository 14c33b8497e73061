"""Activation streams for ITDA construction (Leask et al., ICML 2025, arXiv 2505.17769).

``itda.build`` reads a plain iterator of activation batches; this module holds the stream
helpers every source shares (:func:`stream_settings`, :func:`skip_seen`) and the LM source:
a Hugging Face causal LM wrapped in ``nnsight.LanguageModel``, the residual stream output of
decoder layer ``layer``, read inside an nnsight trace, padding tokens dropped, provenance
(prompt index, token position), keeping what the paper's Jaccard comparison needs.

The Flux activation-cache source (``itda build --cache``, ``build_from_cache``) lives with the
cache it reads, in :mod:`sae_flux.itda_build`: ``sae_flux`` imports ``itda``, never back.

Shape legend: B texts in a batch, S sequence positions, N tokens, D model width.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from cae.model import block_output, decoder_layers
from itda.build import ActivationBatch, BuildConfig, BuildState, build
from itda.build_config import STREAM_KEY
from itda.model import ITDA

logger = logging.getLogger(__name__)


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
