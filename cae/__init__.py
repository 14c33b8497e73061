"""cae: contrastive activation engineering (steering vectors) on Hugging Face LMs via nnsight.

Implements CAA (Rimsky et al. 2024) as studied by the CAE paper (Hao et al. 2025, arXiv
2505.03189): train per-layer steering vectors from contrastive pairs, save and share them,
and add them to the residual stream during traces and cached generation.

``import cae`` is light: the public names below load torch on first use (PEP 562), so the
``cae`` CLI starts at once.

Example:
    >>> from cae import SteeringVector, load_pairs
    >>> from cae.model import load_language_model
    >>> lm = load_language_model("organism:tiny")
    >>> from cae.organism.corpus import items
    >>> sv = SteeringVector.train(lm, [i.pair() for i in items("kind", "ab", 16, "train")], [1])
    >>> sv.meta.layers
    (1,)
"""

from __future__ import annotations

import _sae_flux_requirements  # noqa: F401  (refuses an unsupported dependency version in one line)

from typing import TYPE_CHECKING

from _sae_flux_shared.lazy import lazy_exports

if TYPE_CHECKING:
    from cae.aggregators import AGGREGATORS
    from cae.apply import steer, steering
    from cae.names import POSITIONS
    from cae.operators import OPERATORS
    from cae.pairs import Pair, chat_pairs, load_caa_json, load_mwe_jsonl, load_pairs
    from cae.read import READ_RULES
    from cae.recording import record
    from cae.vector import SteeringVector, VectorMeta

_EXPORTS = {
    "AGGREGATORS": "cae.aggregators",
    "OPERATORS": "cae.operators",
    "POSITIONS": "cae.names",
    "READ_RULES": "cae.read",
    "Pair": "cae.pairs",
    "SteeringVector": "cae.vector",
    "VectorMeta": "cae.vector",
    "chat_pairs": "cae.pairs",
    "load_caa_json": "cae.pairs",
    "load_mwe_jsonl": "cae.pairs",
    "load_pairs": "cae.pairs",
    "record": "cae.recording",
    "steer": "cae.apply",
    "steering": "cae.apply",
}
"""Public name (each of ``__all__``) -> the module that defines it."""

__all__ = [
    "AGGREGATORS",
    "OPERATORS",
    "POSITIONS",
    "READ_RULES",
    "Pair",
    "SteeringVector",
    "VectorMeta",
    "chat_pairs",
    "load_caa_json",
    "load_mwe_jsonl",
    "load_pairs",
    "record",
    "steer",
    "steering",
]

lazy_exports(__name__, _EXPORTS)
