"""ITDA dictionaries as a SAELens architecture (Leask, Nanda, Al Moubayed, ICML 2025).

Importing ``itda`` registers the ``"itda"`` architecture with sae_lens, after which
``sae_lens.SAE.load_from_disk`` and ``SAE.from_pretrained`` load ITDA dictionaries.

Example:
    >>> import torch, itda, sae_lens
    >>> d = itda.ITDA.build([torch.randn(512, 16)], target_l0=4, loss_threshold=0.5,
    ...                     progress=False)
    >>> isinstance(d, sae_lens.SAE), d.cfg.architecture()
    (True, 'itda')
"""

import _sae_flux_requirements  # noqa: F401  (refuses an unsupported dependency version in one line)

from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class

from itda.build import ActivationBatch, BuildConfig, BuildError, build
from itda.interop import fold_mirrored_codes, jaccard, to_matching_pursuit
from itda.model import ITDA, ITDAConfig
from itda.provenance import AtomSource, Provenance
from itda.pursuit import Pursuit, gradient_pursuit, matching_pursuit
from itda.sources import build_from_cache, build_from_lm

if "itda" not in SAE_CLASS_REGISTRY:
    register_sae_class("itda", ITDA, ITDAConfig)

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
    "build_from_cache",
    "build_from_lm",
    "fold_mirrored_codes",
    "gradient_pursuit",
    "jaccard",
    "matching_pursuit",
    "to_matching_pursuit",
]
