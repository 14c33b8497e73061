"""An ITDA dictionary as sae_lens's built-in ``matching_pursuit`` SAE, on disk (``sae-flux export``).

The export (:func:`itda.to_matching_pursuit`; Leask et al., ICML 2025, arXiv 2505.17769) loads
in plain sae_lens, without sae-flux. It is exact (same atoms, codes and reconstructions up to
float32 rounding) for ITDAs built with the default ``normalization="mean"`` (or ``"none"``) and
the matching-pursuit encoder; anything else is refused unless ``allow_approximate``, and then
saved as approximate (``cfg.json`` ``metadata.itda_export.exact: false``, with the reasons).
``sparsity.safetensors`` (the atoms' firing rates on the build data) is carried over, mirrored
for a signed ITDA. With ``check_cache`` the two are compared on real activations
(:func:`itda.compare_export`).

Example:
    >>> report = export_matching_pursuit("runs/itda", "runs/itda-mp")  # doctest: +SKIP
    >>> SAE.load_from_disk("runs/itda-mp")   # plain sae_lens  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from itda import ITDA, compare_export, export_problems, to_matching_pursuit
from itda.sparsity import SPARSITY_FILENAME, mirrored_sparsity
from sae_flux.dictionary import load_dictionary, local_directory

logger = logging.getLogger(__name__)

EXACT_SUFFIX = "-mp"
"""Folder suffix of an exact export, next to the ITDA folder (``itda-double.1.img-mp``)."""
APPROXIMATE_SUFFIX = "-mp-approx"
"""Folder suffix of an approximate export."""


def export_folder_name(itda: ITDA, name: str) -> str:
    """``name`` + ``-mp`` for an exact export, ``-mp-approx`` otherwise."""
    return name + (APPROXIMATE_SUFFIX if export_problems(itda) else EXACT_SUFFIX)


def export_matching_pursuit(
    ref: str | Path,
    out: str | Path,
    allow_approximate: bool = False,
    check_cache: str | None = None,
    tokens: int = 4096,
) -> dict[str, Any]:
    """Write the matching-pursuit export of the ITDA at ``ref`` (folder or ``REPO_ID:FOLDER``)."""
    itda = load_dictionary(ref)
    if not isinstance(itda, ITDA):
        raise ValueError(f"{ref} holds a {type(itda).__name__}, not an ITDA: nothing to export")
    mp = to_matching_pursuit(itda, allow_approximate=allow_approximate)
    out = Path(out)
    mp.save_model(out)
    sparsity = mirrored_sparsity(local_directory(ref), mirrored=not itda.cfg.nonnegative)
    if sparsity is not None:
        save_file({"sparsity": sparsity.contiguous()}, str(out / SPARSITY_FILENAME))
    report: dict[str, Any] = {"dictionary": str(ref), "out": str(out), **mp.cfg.metadata.itda_export}
    if check_cache is not None:
        report["agreement"] = _agreement(itda, mp, check_cache, tokens)
    logger.info("exported %s to %s (%s)", ref, out, "exact" if report["exact"] else "approximate")
    return report


def _agreement(itda: ITDA, mp: Any, cache: str, tokens: int) -> dict[str, Any]:
    from sae_flux.cache import CacheReader

    reader = CacheReader(cache, hook=itda.cfg.metadata.hook_name or None)
    x_ND = torch.cat([acts for acts, _ in reader.in_order(tokens)])[:tokens].float()
    return {**compare_export(itda, mp, x_ND)._asdict(), "data": f"first tokens of cache {Path(cache).name}"}
