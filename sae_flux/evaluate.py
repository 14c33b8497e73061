"""``sae-flux eval``: the project's metrics for any dictionary sae_lens loads (SAEs and ITDA).

Reconstruction metrics (:mod:`sae_flux.metrics`, after Shabalin et al. 2025, arXiv 2505.24360)
over a window of raw activations from a cache or a Flux stream, and optionally the downstream
"recovered" metric (:mod:`sae_flux.downstream`) on a few prompts.

Example:
    >>> report = evaluate_dictionary(  # doctest: +SKIP
    ...     EvalConfig(dictionary="sae", cache="cache", tokens=65536))
    >>> report["fvu"], report["dead_fraction"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Any

from sae_flux.dictionary import HubReference, load_dictionary, parse_reference
from sae_flux.evaluate_config import EvalConfig
from sae_flux.metrics import evaluate

logger = logging.getLogger(__name__)


def evaluate_dictionary(cfg: EvalConfig) -> dict[str, Any]:
    """Metrics of ``cfg.dictionary`` as a JSON-ready dict (see :class:`EvalConfig`)."""
    from sae_flux.cache import CacheReader, load_flux, read_prompts
    from sae_flux.sources import FluxStream

    if cfg.save and isinstance(parse_reference(cfg.dictionary), HubReference):
        raise ValueError(f"--save writes into a local dictionary directory; {cfg.dictionary} is a Hub reference")
    sae = load_dictionary(cfg.dictionary)
    hook = cfg.hook or sae.cfg.metadata.hook_name
    flux = load_flux(cfg.model) if cfg.model else None
    if cfg.cache is not None:
        reader = CacheReader(cfg.cache, hook=hook)
        batches: Any = (acts for acts, _ in reader.iter_shards())
        width, where = reader.d_model, f"activation cache {cfg.cache}"
    else:
        stream = FluxStream(flux, read_prompts(cfg.prompts or ""), hook, cfg.num_inference_steps)
        batches = (stream.tokens(0, i, i + 1) for i in range(len(stream.prompts)))
        width, where = stream.d_model, f"streamed from {cfg.prompts}"
    if width != sae.cfg.d_in:
        raise ValueError(f"the data in {where} has d_model {width} but the dictionary has d_in={sae.cfg.d_in}")
    metrics = evaluate(sae, batches, max_tokens=cfg.tokens, progress=True)
    if metrics.dead_fraction == 1.0:
        logger.warning("dictionary %s has no live latent: none of its %d latents fired on the %d "
                       "tokens of the window (wrong hook or scale of the data, or a dead dictionary)",
                       cfg.dictionary, sae.cfg.d_sae, metrics.tokens)
    report = {**metrics.record(), "dictionary": cfg.dictionary, "hook": hook, "data": where,
              "window": f"first {metrics.tokens} tokens, in order, of the data ({where})"}
    if cfg.downstream_prompts:
        from sae_flux.downstream import downstream

        prompts = read_prompts(cfg.prompts or "")[: cfg.downstream_prompts]
        result = downstream(flux, sae, hook, prompts, num_inference_steps=cfg.num_inference_steps)
        report["downstream"] = result._asdict()
    if cfg.save:
        metrics.save(cfg.dictionary, extra={k: v for k, v in report.items() if k not in metrics.record()}
                     | {"command": _command(cfg)})
    return report


def _command(cfg: EvalConfig) -> str:
    """The ``sae-flux eval`` command line that measures what ``cfg`` does (recorded with --save)."""
    data = f"--cache {cfg.cache}" if cfg.cache is not None else f"--model {cfg.model} --prompts {cfg.prompts}"
    hook = f" --hook {cfg.hook}" if cfg.hook else ""
    steps = f" --num-inference-steps {cfg.num_inference_steps}" if cfg.num_inference_steps else ""
    return f"sae-flux eval {cfg.dictionary} {data}{hook}{steps} --tokens {cfg.tokens} --save"
