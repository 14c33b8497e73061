"""cae: contrastive activation engineering (steering vectors) on Hugging Face LMs via nnsight.

Implements CAA (Rimsky et al. 2024) as studied by the CAE paper (Hao et al. 2025, arXiv
2505.03189): train per-layer steering vectors from contrastive pairs, save and share them,
and add them to the residual stream during traces and cached generation.

Example:
    >>> from cae import SteeringVector, load_pairs
    >>> from cae.model import load_language_model
    >>> lm = load_language_model("organism:tiny")
    >>> from cae.organism.corpus import items
    >>> sv = SteeringVector.train(lm, [i.pair() for i in items("kind", "ab", 16, "train")], [1])
    >>> sv.meta.layers
    (1,)
"""

import _sae_flux_requirements  # noqa: F401  (refuses an unsupported dependency version in one line)

from cae.aggregators import AGGREGATORS
from cae.apply import POSITIONS, steer, steering
from cae.pairs import Pair, load_caa_json, load_mwe_jsonl, load_pairs
from cae.read import READ_RULES
from cae.vector import SteeringVector, VectorMeta

__all__ = [
    "AGGREGATORS",
    "POSITIONS",
    "READ_RULES",
    "Pair",
    "SteeringVector",
    "VectorMeta",
    "load_caa_json",
    "load_mwe_jsonl",
    "load_pairs",
    "steer",
    "steering",
]
