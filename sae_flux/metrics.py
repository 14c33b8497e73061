"""Reconstruction and sparsity metrics of a dictionary, computed by the project on raw activations.

sae_lens computes its training metrics only when wandb logging is on, and in the normalised space
the SAE trains in; these are computed here, on raw activations, for any dictionary sae_lens loads
(SAEs of every architecture and ITDA dictionaries: anything with ``encode`` / ``decode``):

- fraction of variance unexplained ``FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over the
  window (the metric of Shabalin et al. 2025, arXiv 2505.24360, who report FVU 0.1-0.5 on Flux),
  and explained variance ``1 - FVU``;
- L0, the mean number of active latents per token;
- dead fraction: latents that never fire over the stated window of ``tokens`` tokens;
- feature density per latent, saved as ``sparsity.safetensors`` in SAELens's format (key
  ``"sparsity"``, ``log10(density + 1e-10)``, what ``SAE.from_pretrained_with_cfg_and_sparsity``
  returns).

Legend: N tokens, D model width, F latents.

Example:
    >>> sae = SAE.load_from_disk("sae")  # doctest: +SKIP
    >>> m = evaluate(sae, CacheReader("cache").batches(4096, epochs=1),  # doctest: +SKIP
    ...              max_tokens=65536)
    >>> m.fvu, m.l0, m.dead_fraction  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

import _sae_flux_shared.commit as commit

logger = logging.getLogger(__name__)

SPARSITY_FILE = "sparsity.safetensors"
METRICS_FILE = "metrics.json"
DENSITY_EPS = 1e-10


@dataclass
class DictionaryMetrics:
    """Metrics of one dictionary over a window of ``tokens`` raw activations."""

    fvu: float
    """Fraction of variance unexplained (pooled over the window)."""
    explained_variance: float
    """``1 - fvu``."""
    l0: float
    """Mean active latents per token."""
    dead_fraction: float
    """Fraction of latents that never fired in the window."""
    tokens: int
    """Size of the window the metrics were computed over."""
    mse: float
    """Mean squared error per token (summed over dimensions)."""
    density_F: Tensor = field(repr=False)
    """Firing frequency of each latent over the window."""

    def record(self) -> dict[str, Any]:
        """The scalar metrics as a JSON-ready dict."""
        out = asdict(self)
        out.pop("density_F")
        out["dead_window_tokens"] = self.tokens
        return out

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write ``metrics.json`` and ``sparsity.safetensors`` (SAELens's format) in ``directory``."""
        directory = Path(directory)
        save_sparsity(directory / SPARSITY_FILE, self.density_F)
        record = {**self.record(), **(extra or {})}
        commit.write_json(directory / METRICS_FILE, record, indent=2, sort_keys=True)


def save_sparsity(path: str | Path, density_F: Float[Tensor, " f"]) -> None:
    """``sparsity.safetensors`` as SAELens writes it: ``{"sparsity": log10(density + 1e-10)}``."""
    log_density_F = torch.log10(density_F.float().cpu() + DENSITY_EPS).contiguous()
    commit.save_safetensors(path, {"sparsity": log_density_F})


def load_metrics(directory: str | Path) -> dict[str, Any] | None:
    """``metrics.json`` of a dictionary directory, or ``None`` when there is none."""
    path = Path(directory) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


@torch.no_grad()
def evaluate(
    dictionary: Any,
    batches: Iterable[Float[Tensor, "n d"]],
    max_tokens: int | None = None,
    progress: bool = False,
) -> DictionaryMetrics:
    """Metrics of ``dictionary`` (``encode``/``decode``) over raw ``batches``, up to ``max_tokens``."""
    dictionary.eval()
    sums = _Sums()
    bar = tqdm(total=max_tokens, desc="evaluate", unit="tok", disable=not progress)
    for acts_ND in batches:
        if max_tokens is not None:
            acts_ND = acts_ND[: max_tokens - sums.n]
        if acts_ND.shape[0] == 0:
            break
        acts_ND = acts_ND.to(dictionary.device, dictionary.dtype)
        latents_NF = dictionary.encode(acts_ND)
        recon_ND = dictionary.decode(latents_NF)
        sums.add(acts_ND, recon_ND, latents_NF)
        bar.update(acts_ND.shape[0])
        if max_tokens is not None and sums.n >= max_tokens:
            break
    bar.close()
    if sums.n == 0:
        raise ValueError("no activations to evaluate on (the data source is empty)")
    if max_tokens is not None and sums.n < max_tokens:
        logger.warning("the evaluation window holds %s tokens, fewer than the %s asked (the data has no more): "
                       "every metric, the dead fraction included, is over %s tokens",
                       f"{sums.n:,}", f"{max_tokens:,}", f"{sums.n:,}")
    return sums.metrics()


class _Sums:
    """float64 running sums for pooled FVU, L0 and per-latent firing counts."""

    def __init__(self) -> None:
        self.n = 0
        self.sq_err = 0.0
        self.sum_D: Tensor | None = None
        self.sq_sum = 0.0
        self.fired_F: Tensor | None = None
        self.active = 0.0

    def add(self, acts_ND: Tensor, recon_ND: Tensor, latents_NF: Tensor) -> None:
        x_ND = acts_ND.double()
        if latents_NF.is_sparse:
            latents_NF = latents_NF.to_dense()
        firing_NF = latents_NF != 0
        self.n += x_ND.shape[0]
        self.sq_err += (recon_ND.double() - x_ND).pow(2).sum().item()
        self.sq_sum += x_ND.pow(2).sum().item()
        self.active += firing_NF.sum().item()
        sum_D, fired_F = x_ND.sum(0).cpu(), firing_NF.sum(0).double().cpu()
        self.sum_D = sum_D if self.sum_D is None else self.sum_D + sum_D
        self.fired_F = fired_F if self.fired_F is None else self.fired_F + fired_F

    def metrics(self) -> DictionaryMetrics:
        assert self.sum_D is not None and self.fired_F is not None
        total_var = self.sq_sum - self.sum_D.pow(2).sum().item() / self.n
        fvu = self.sq_err / total_var if total_var > 0 else math.inf
        density_F = (self.fired_F / self.n).float()
        return DictionaryMetrics(
            fvu=fvu,
            explained_variance=1 - fvu,
            l0=self.active / self.n,
            dead_fraction=(self.fired_F == 0).double().mean().item(),
            tokens=self.n,
            mse=self.sq_err / self.n,
            density_F=density_F,
        )
