"""ITDA dictionaries as a SAELens architecture (Leask, Nanda, Al Moubayed, ICML 2025).

Importing ``itda`` registers the ``"itda"`` architecture with sae_lens, after which
``sae_lens.SAE.load_from_disk`` and ``SAE.from_pretrained`` load ITDA dictionaries. The import
itself is light: the public names below load torch and sae_lens on first use (PEP 562), and
the registration happens as soon as sae_lens is imported (:mod:`itda.registration`), so the
``itda`` CLI starts at once.

Example:
    >>> import torch, itda, sae_lens
    >>> d = itda.ITDA.build([torch.randn(512, 16)], target_l0=4, loss_threshold=0.5,
    ...                     progress=False)
    >>> isinstance(d, sae_lens.SAE), d.cfg.architecture()
    (True, 'itda')
"""

from __future__ import annotations

import _sae_flux_requirements  # noqa: F401  (refuses an unsupported dependency version in one line)

from typing import TYPE_CHECKING

from _sae_flux_shared.lazy import lazy_exports
from itda.registration import register_with_sae_lens

if TYPE_CHECKING:
    from itda.build import ActivationBatch, BuildError, build
    from itda.build_config import BuildConfig
    from itda.interop import (
        ExportAgreement,
        compare_export,
        export_problems,
        fold_mirrored_codes,
        jaccard,
        to_matching_pursuit,
    )
    from itda.model import ITDA, ITDAConfig
    from itda.provenance import AtomSource, Provenance
    from itda.pursuit import Pursuit, gradient_pursuit, matching_pursuit
    from itda.sources import build_from_lm
    from itda.sparsity import FiringRates, firing_rates

_EXPORTS = {
    "ITDA": "itda.model",
    "ITDAConfig": "itda.model",
    "ActivationBatch": "itda.build",
    "AtomSource": "itda.provenance",
    "BuildConfig": "itda.build_config",
    "BuildError": "itda.build",
    "Provenance": "itda.provenance",
    "Pursuit": "itda.pursuit",
    "build": "itda.build",
    "build_from_lm": "itda.sources",
    "fold_mirrored_codes": "itda.interop",
    "ExportAgreement": "itda.interop",
    "compare_export": "itda.interop",
    "export_problems": "itda.interop",
    "FiringRates": "itda.sparsity",
    "firing_rates": "itda.sparsity",
    "gradient_pursuit": "itda.pursuit",
    "jaccard": "itda.interop",
    "matching_pursuit": "itda.pursuit",
    "to_matching_pursuit": "itda.interop",
}
"""Public name (each of ``__all__``) -> the module that defines it."""

__all__ = [
    "ITDA",
    "ITDAConfig",
    "ActivationBatch",
    "AtomSource",
    "BuildConfig",
    "BuildError",
    "Provenance",
    "Pursuit",
    "build",
    "build_from_lm",
    "fold_mirrored_codes",
    "ExportAgreement",
    "compare_export",
    "export_problems",
    "FiringRates",
    "firing_rates",
    "gradient_pursuit",
    "jaccard",
    "matching_pursuit",
    "to_matching_pursuit",
]

register_with_sae_lens()

lazy_exports(__name__, _EXPORTS)
