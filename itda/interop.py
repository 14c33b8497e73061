"""Interop of ITDA dictionaries (Leask, Nanda, Al Moubayed, ICML 2025, arXiv 2505.17769).

- ``to_matching_pursuit``: export to sae_lens's built-in ``MatchingPursuitSAE``
  (architecture ``"matching_pursuit"``), loadable by plain sae_lens without ``itda``.
- ``jaccard``: the paper's dictionary similarity (section 5, layer matching): the Jaccard
  index of the two dictionaries' provenance sets, i.e. how many atoms were taken from the
  same (source, prompt, position) in both.

What the export keeps and loses. sae_lens's matching pursuit picks ``argmax relu(r @ W_dec.T)``
in raw activation space with a tied, unit-norm decoder and adds ``b_dec`` back. The export is
**exact** (same atoms with non-negligible codes on every token, same codes and reconstructions
up to float32 rounding; measured by :func:`compare_export`) when all of these hold, and it says so in
``cfg.metadata.itda_export["exact"]``:

1. the ITDA's std is all ones (``normalization="mean"``, the default, or ``"none"``); its mean
   is exported as ``b_dec``. A tied encoder cannot express a per-dimension std, and a uniform
   std s != 1 would scale every code by s: such exports are *approximate* (directions
   ``normalize(atom * std)``), refused unless ``allow_approximate=True``;
2. the encoder is matching pursuit without screening (``encoder="mp"``, ``candidates=None``):
   a gradient-pursuit or screened ITDA exports as plain matching pursuit, approximate;
3. sae_lens's pursuit is non-negative. A signed ITDA is exported with a mirrored dictionary
   ``[atoms; -atoms]`` (``d_sae = 2F``): signed pursuit over F atoms equals non-negative
   pursuit over the 2F mirrored ones; ``fold_mirrored_codes`` maps codes back exactly;
4. ``max_iterations = target_l0``, ``residual_threshold = 0`` and
   ``stop_on_duplicate_support = False`` so both run exactly ``target_l0`` steps.

Provenance is not part of the matching-pursuit format; it stays in the ITDA directory.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

import torch
from sae_lens.saes.matching_pursuit_sae import MatchingPursuitSAE, MatchingPursuitSAEConfig
from sae_lens.saes.sae import SAEMetadata
from torch import Tensor

from itda.provenance import Provenance

if TYPE_CHECKING:  # the dictionary is read, never made, here: itda.model imports this module
    from itda.model import ITDA

logger = logging.getLogger(__name__)


def export_problems(itda: ITDA) -> list[str]:
    """Why the matching-pursuit export of ``itda`` would not be exact (empty: it is exact).

    Example:
        >>> import torch, itda
        >>> acts = torch.randn(256, 8) * torch.arange(1.0, 9.0)
        >>> export_problems(itda.ITDA.build([acts], target_l0=2, loss_threshold=0.5, progress=False))
        []
        >>> scaled = itda.ITDA.build([acts], target_l0=2, loss_threshold=0.5, progress=False,
        ...                          normalization="mean_std")
        >>> len(export_problems(scaled)) > 0
        True
    """
    problems = []
    std_D = itda.act_std.detach().float()
    if not bool((std_D == 1).all()):
        uniform = bool(torch.allclose(std_D, std_D[0].expand_as(std_D), rtol=1e-5, atol=0.0))
        problems.append(
            f"its uniform std {float(std_D[0]):.4g} would scale every code"
            if uniform
            else "it was built with per-dimension std normalisation (normalization='mean_std'), "
            "which a tied matching-pursuit encoder cannot express"
        )
    if itda.cfg.encoder != "mp":
        problems.append("it encodes with gradient pursuit, exported as matching pursuit")
    if itda.cfg.candidates is not None and itda.cfg.candidates < itda.cfg.d_sae:
        problems.append("it screens candidates, which sae_lens's matching pursuit does not")
    return problems


def to_matching_pursuit(itda: ITDA, allow_approximate: bool = False) -> MatchingPursuitSAE:
    """A sae_lens ``MatchingPursuitSAE`` that encodes and decodes like ``itda`` (module notes).

    Raises ``ValueError`` when the export cannot be exact, unless ``allow_approximate``; an
    approximate export records ``exact: False`` and the reasons in ``metadata.itda_export``.

    Example:
        >>> import torch, itda
        >>> d = itda.ITDA.build([torch.randn(256, 8)], target_l0=2, loss_threshold=0.5,
        ...                     normalization="mean", nonnegative=True, progress=False)
        >>> mp = itda.to_matching_pursuit(d)
        >>> mp.cfg.architecture(), mp.cfg.d_sae == d.cfg.d_sae, mp.cfg.metadata.itda_export["exact"]
        ('matching_pursuit', True, True)
    """
    problems = export_problems(itda)
    if problems and not allow_approximate:
        raise ValueError(
            "the matching-pursuit export of this ITDA would not be exact: "
            + "; ".join(problems)
            + " (pass allow_approximate=True, or build with normalization='mean', encoder='mp')"
        )
    for problem in problems:
        logger.warning("approximate matching-pursuit export: %s", problem)
    if problems:
        dirs_FD = torch.nn.functional.normalize(itda.W_dec.detach().float(), dim=1)
    else:
        dirs_FD = itda.atoms.float()  # the very atoms ITDA pursues with (std is all ones)
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
        "exact": not problems,
        "approximate_because": problems,
        "mirrored": not itda.cfg.nonnegative,
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
        mp.W_dec.copy_(dirs_FD.to(mp.dtype).cpu())
        mp.b_dec.copy_(itda.b_dec.detach().to(mp.dtype).cpu())
    return mp.to(itda.device)


ROUNDING = 1e-5
"""Relative size below which a code is float32 rounding noise (see ``ExportAgreement``)."""


class ExportAgreement(NamedTuple):
    """How an export's encode/decode compare with the ITDA's on the same activations.

    Example:
        >>> import torch, itda
        >>> d = itda.ITDA.build([torch.randn(256, 8)], target_l0=2, loss_threshold=0.5, progress=False)
        >>> agreement = compare_export(d, to_matching_pursuit(d), torch.randn(32, 8))
        >>> agreement.tokens, agreement.same_significant_support, agreement.max_recon_error < 1e-4
        (32, 1.0, True)
    """

    tokens: int
    """Activations compared."""
    same_support: float
    """Fraction of tokens whose set of non-zero atoms is identical."""
    same_significant_support: float
    """Fraction of tokens whose atoms with ``|code| > ROUNDING * max_code`` are identical. A token
    reconstructed to float32 rounding in fewer than ``target_l0`` steps (an atom encoding
    itself) spends its last steps on rounding noise; which atoms pick up that noise (codes
    ~1e-7) depends on the order of float operations, so only this measure can be 1."""
    max_code_error: float
    """Largest ``|code_mp - code_itda|`` (mirrored codes folded back), raw units."""
    max_code: float
    """Largest ``|code_itda|``, for scale."""
    max_recon_error: float
    """Largest ``|decode_mp(encode_mp(x)) - decode_itda(encode_itda(x))|``."""
    max_activation: float
    """Largest ``|x|``, for scale."""


@torch.no_grad()
def compare_export(itda: ITDA, mp: MatchingPursuitSAE, x_ND: Tensor) -> ExportAgreement:
    """Encode and decode ``x_ND`` with both and measure the differences.

    Example:
        >>> import torch, itda
        >>> d = itda.ITDA.build([torch.randn(256, 8)], target_l0=2, loss_threshold=0.5, progress=False)
        >>> compare_export(d, to_matching_pursuit(d), torch.randn(16, 8)).same_significant_support
        1.0
    """
    codes_itda = itda.encode(x_ND).float()
    codes_mp = mp.encode(x_ND.to(mp.device, mp.dtype)).float()
    recon_mp = mp.decode(codes_mp.to(mp.dtype)).float()
    if mp.cfg.d_sae == 2 * itda.cfg.d_sae and not itda.cfg.nonnegative:
        codes_mp = fold_mirrored_codes(codes_mp)
    recon_itda = itda.decode(codes_itda.to(itda.dtype)).float()
    tol = ROUNDING * float(codes_itda.abs().max())
    return ExportAgreement(
        tokens=int(x_ND.shape[0]),
        same_support=float(((codes_itda != 0) == (codes_mp != 0)).all(-1).float().mean()),
        same_significant_support=float(
            ((codes_itda.abs() > tol) == (codes_mp.abs() > tol)).all(-1).float().mean()
        ),
        max_code_error=float((codes_mp - codes_itda).abs().max()),
        max_code=float(codes_itda.abs().max()),
        max_recon_error=float((recon_mp - recon_itda).abs().max()),
        max_activation=float(x_ND.abs().max()),
    )


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
