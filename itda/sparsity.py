"""Atom firing rates of an ITDA dictionary, saved as SAELens's ``sparsity.safetensors``.

SAELens publishes, beside every dictionary, ``sparsity.safetensors`` holding
``{"sparsity": log10(density + 1e-10)}`` per latent (what
``SAE.from_pretrained_with_cfg_and_sparsity`` returns). For an ITDA the density of an atom is
the fraction of tokens whose code on that atom is non-zero, measured with the finished
dictionary on (a prefix of) the data it was built from (:func:`firing_rates`; ``itda build``
and :func:`sae_flux.itda_build.build_from_cache` do it on the first ``sparsity_tokens`` tokens of the
cache, in cache order).

The file also holds ``sparsity_positive`` / ``sparsity_negative`` (the same for positive and
negative codes only): a signed ITDA's matching-pursuit export has the mirrored dictionary
``[atoms; -atoms]`` whose latents are exactly those two halves (:func:`mirrored_sparsity`).
Its safetensors metadata records the measuring window (``tokens``, ``data``).

Legend: N tokens, F atoms.

Example:
    >>> import torch, itda
    >>> acts = torch.randn(512, 16)
    >>> d = itda.ITDA.build([acts], target_l0=4, loss_threshold=0.5, progress=False)
    >>> rates = firing_rates(d, [acts])
    >>> rates.tokens, rates.positive_F.shape == (d.cfg.d_sae,)
    (512, True)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from jaxtyping import Float
from safetensors import safe_open
from torch import Tensor

import _sae_flux_shared.commit as commit

if TYPE_CHECKING:
    from itda.model import ITDA

SPARSITY_FILENAME = "sparsity.safetensors"
"""SAELens's file name (``sae_lens.constants.SPARSITY_FILENAME``)."""
DENSITY_EPS = 1e-10
"""Added before the log10, as SAELens does."""
CHUNK_BYTES = 2**26
"""Dense codes materialised at once while counting (64 MiB)."""


class FiringRates(NamedTuple):
    """Per-atom fraction of tokens with a positive / negative code, over ``tokens`` tokens.

    Example:
        >>> import torch
        >>> rates = FiringRates(torch.tensor([0.5, 0.0]), torch.tensor([0.25, 0.0]), 4, "toy")
        >>> rates.density_F.tolist()
        [0.75, 0.0]
    """

    positive_F: Float[Tensor, " F"]
    """Fraction of the tokens on which each atom's code is > 0."""
    negative_F: Float[Tensor, " F"]
    """Fraction of the tokens on which each atom's code is < 0."""
    tokens: int
    """Tokens counted."""
    data: str
    """What the tokens were (recorded in ``sparsity.safetensors``)."""

    @property
    def density_F(self) -> Float[Tensor, " F"]:
        """Fraction of tokens on which the atom fires (any sign)."""
        return self.positive_F + self.negative_F


@torch.no_grad()
def firing_rates(
    itda: ITDA, batches: Iterable[Tensor], max_tokens: int | None = None, data: str = "build data"
) -> FiringRates:
    """Count, per atom, the tokens of ``batches`` (raw activations) it encodes non-zero.

    Example:
        >>> import torch, itda
        >>> acts = torch.randn(512, 8)
        >>> d = itda.ITDA.build([acts], target_l0=2, loss_threshold=0.5, progress=False)
        >>> rates = firing_rates(d, acts.split(128), max_tokens=256)
        >>> rates.tokens, rates.density_F.shape == (d.cfg.d_sae,), float(rates.density_F.sum()) <= 2.0
        (256, True, True)
    """
    from itda import pursuit

    n_atoms = itda.cfg.d_sae
    pos_F = torch.zeros(n_atoms, dtype=torch.float64)
    neg_F = torch.zeros(n_atoms, dtype=torch.float64)
    seen = 0
    rows = max(1, CHUNK_BYTES // (4 * n_atoms))
    for acts_ND in batches:
        if max_tokens is not None:
            acts_ND = acts_ND[: max_tokens - seen]
        if acts_ND.shape[0] == 0:
            break
        result = itda.encode_sparse(acts_ND.to(itda.device))
        for start in range(0, acts_ND.shape[0], rows):
            part = pursuit.Pursuit(*(t[start : start + rows] for t in result))
            codes_NF = pursuit.to_dense(part, n_atoms)
            pos_F += (codes_NF > 0).sum(0).double().cpu()
            neg_F += (codes_NF < 0).sum(0).double().cpu()
        seen += acts_ND.shape[0]
        if max_tokens is not None and seen >= max_tokens:
            break
    if seen == 0:
        raise ValueError("no activations to measure firing rates on (the data source is empty)")
    return FiringRates((pos_F / seen).float(), (neg_F / seen).float(), seen, data)


def _log10(density_F: Tensor) -> Tensor:
    return torch.log10(density_F.float().cpu() + DENSITY_EPS).contiguous()


def save_sparsity(directory: str | Path, rates: FiringRates) -> Path:
    """Write ``sparsity.safetensors`` (SAELens's key ``sparsity`` plus the signed halves)."""
    path = Path(directory) / SPARSITY_FILENAME
    tensors = {
        "sparsity": _log10(rates.density_F),
        "sparsity_positive": _log10(rates.positive_F),
        "sparsity_negative": _log10(rates.negative_F),
    }
    commit.save_safetensors(path, tensors, metadata={"data": rates.data, "tokens": str(rates.tokens)})
    return path


def mirrored_sparsity(directory: str | Path, mirrored: bool) -> Tensor | None:
    """The ``sparsity`` of the matching-pursuit export of the ITDA saved in ``directory``.

    ``None`` when the directory holds no firing rates with the signed halves.
    """
    path = Path(directory) / SPARSITY_FILENAME
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        if not mirrored:
            return handle.get_tensor("sparsity")
        if not {"sparsity_positive", "sparsity_negative"} <= keys:
            return None
        return torch.cat([handle.get_tensor("sparsity_positive"),
                          handle.get_tensor("sparsity_negative")])


def sparsity_window(directory: str | Path) -> dict[str, str]:
    """The measuring window recorded in a ``sparsity.safetensors`` (empty when none)."""
    path = Path(directory) / SPARSITY_FILENAME
    if not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
