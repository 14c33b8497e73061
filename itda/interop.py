"""Interop of ITDA dictionaries (Leask, Nanda, Al Moubayed, ICML 2025, arXiv 2505.17769).

- ``to_matching_pursuit``: export to sae_lens's built-in ``MatchingPursuitSAE``
  (architecture ``"matching_pursuit"``), loadable by plain sae_lens without ``itda``.
- ``jaccard``: the paper's dictionary similarity (section 5, layer matching): the Jaccard
  index of the two dictionaries' provenance sets, i.e. how many atoms were taken from the
  same (source, prompt, position) in both.

What the export keeps and loses. sae_lens's matching pursuit picks ``argmax relu(r @ W_dec.T)``
in raw activation space with a tied, unit-norm decoder and adds ``b_dec`` back. So:

1. ITDA's mean is exported as ``b_dec``; a *uniform* std is absorbed (codes are scaled by it,
   reconstructions are identical). A per-dimension std cannot be expressed by a tied encoder:
   ``allow_approximate=True`` exports the raw-space directions ``normalize(atom * std)`` and the
   encodings then differ.
2. sae_lens's pursuit is non-negative. A signed ITDA is exported with a mirrored dictionary
   ``[atoms; -atoms]`` (``d_sae = 2F``): signed pursuit over F atoms equals non-negative
   pursuit over the 2F mirrored ones; ``fold_mirrored_codes`` maps codes back.
3. ``max_iterations = target_l0``, ``residual_threshold = 0`` and
   ``stop_on_duplicate_support = False`` so both run exactly ``target_l0`` steps.
4. A gradient-pursuit ITDA is exported with matching pursuit (a different, weaker encoder).
5. Provenance is not part of the matching-pursuit format; it stays in the ITDA directory.
"""

from __future__ import annotations

import logging

import torch
from sae_lens.saes.matching_pursuit_sae import MatchingPursuitSAE, MatchingPursuitSAEConfig
from sae_lens.saes.sae import SAEMetadata
from torch import Tensor

from itda.model import ITDA
from itda.provenance import Provenance

logger = logging.getLogger(__name__)


def to_matching_pursuit(itda: ITDA, allow_approximate: bool = False) -> MatchingPursuitSAE:
    """A sae_lens ``MatchingPursuitSAE`` that reconstructs like ``itda`` (see module notes).

    Example:
        >>> import torch, itda
        >>> d = itda.ITDA.build([torch.randn(256, 8)], target_l0=2, loss_threshold=0.5,
        ...                     normalization="mean", nonnegative=True, progress=False)
        >>> mp = itda.to_matching_pursuit(d)
        >>> mp.cfg.architecture(), mp.cfg.d_sae == d.cfg.d_sae
        ('matching_pursuit', True)
    """
    std_D = itda.act_std.detach().float()
    uniform = bool(torch.allclose(std_D, std_D[0].expand_as(std_D), rtol=1e-5, atol=0.0))
    if not uniform and not allow_approximate:
        raise ValueError(
            "this ITDA was built with per-dimension std normalisation, which a tied "
            "matching-pursuit encoder cannot express; pass allow_approximate=True or build "
            "with normalization='mean'"
        )
    if itda.cfg.encoder != "mp":
        logger.warning("exporting a gradient-pursuit ITDA as matching pursuit (approximate)")
    dirs_FD = torch.nn.functional.normalize(itda.W_dec.detach().float(), dim=1)
    if not itda.cfg.nonnegative:
        dirs_FD = torch.cat([dirs_FD, -dirs_FD])
    meta = SAEMetadata(
        **{
            k: v
            for k, v in itda.cfg.metadata.to_dict().items()
            if k not in ("sae_lens_version", "sae_lens_training_version")
        }
    )
    meta.itda_export = {
        "mirrored": not itda.cfg.nonnegative,
        "exact": uniform,
        "n_atoms": itda.cfg.d_sae,
    }
    cfg = MatchingPursuitSAEConfig(
        d_in=itda.cfg.d_in,
        d_sae=dirs_FD.shape[0],
        dtype=itda.cfg.dtype,
        device="cpu",
        apply_b_dec_to_input=True,
        residual_threshold=0.0,
        max_iterations=itda.cfg.target_l0,
        stop_on_duplicate_support=False,
        metadata=meta,
    )
    mp = MatchingPursuitSAE(cfg)
    with torch.no_grad():
        mp.W_dec.copy_(dirs_FD.to(mp.dtype))
        mp.b_dec.copy_(itda.b_dec.detach().to(mp.dtype).cpu())
    return mp.to(itda.device)


def fold_mirrored_codes(codes_N2F: Tensor) -> Tensor:
    """Codes of a mirrored export (``d_sae = 2F``) back to signed codes over F atoms.

    A signed ITDA exported to sae_lens's non-negative matching pursuit keeps each atom twice,
    as ``+a`` (latent f) and ``-a`` (latent F + f); this folds the two halves back.

    Example:
        >>> import torch
        >>> fold_mirrored_codes(torch.tensor([[2.0, 0.0, 0.0, 1.5]])).tolist()
        [[2.0, -1.5]]
    """
    half = codes_N2F.shape[-1] // 2
    return codes_N2F[..., :half] - codes_N2F[..., half:]


def jaccard(a: ITDA | Provenance, b: ITDA | Provenance) -> float:
    """Jaccard index of two dictionaries' atom addresses (hooks ignored), in [0, 1].

    Example:
        >>> import torch, itda
        >>> acts = torch.randn(256, 8)
        >>> d = itda.ITDA.build([acts], target_l0=2, loss_threshold=0.5, progress=False)
        >>> itda.jaccard(d, d)
        1.0
    """
    keys_a, keys_b = _provenance(a).keys(), _provenance(b).keys()
    union = keys_a | keys_b
    return len(keys_a & keys_b) / len(union) if union else 1.0


def _provenance(d: ITDA | Provenance) -> Provenance:
    if isinstance(d, Provenance):
        return d
    if d.provenance is None:
        raise ValueError("jaccard needs dictionaries with provenance (load with ITDA.load)")
    return d.provenance
