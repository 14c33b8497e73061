"""The names of cae's strategies, apart from their torch implementations.

``cae train --aggregator`` and ``cae generate / eval --positions`` offer these as choices, and
the CLI must build its parser without importing torch. The registries that hold the
implementations are keyed by exactly these names: :data:`cae.aggregators.AGGREGATORS` (tested),
:data:`cae.operators.OPERATORS` (tested), the position rules of :mod:`cae.apply` and the sites
of :mod:`cae.model`. Read rules need no torch and keep their one registry,
:data:`cae.read.READ_RULES`.

Example:
    >>> AGGREGATOR_NAMES, POSITIONS
    (('mean', 'pca', 'logistic'), ('all', 'from_prompt_end', 'generated'))
    >>> OPERATOR_NAMES, SITES
    (('add', 'ablate', 'ablate_then_add', 'norm_preserving'), ('block', 'attn', 'mlp'))
"""

from __future__ import annotations

from typing import Literal, get_args

AggregatorName = Literal["mean", "pca", "logistic"]
"""An aggregator of :data:`cae.aggregators.AGGREGATORS`."""
PositionRule = Literal["all", "from_prompt_end", "generated"]
"""Where :mod:`cae.apply` adds a vector (its module docstring defines each rule)."""
OperatorName = Literal["add", "ablate", "ablate_then_add", "norm_preserving"]
"""How :mod:`cae.apply` changes the activation (:data:`cae.operators.OPERATORS`)."""
ReadRuleName = Literal["answer", "last", "mean"]
"""A read rule of :data:`cae.read.READ_RULES` (the registry; a test keeps the two equal)."""
SiteName = Literal["block", "attn", "mlp"]
"""Which output of decoder block L a vector reads and steers (:func:`cae.model.site_module`)."""

AGGREGATOR_NAMES: tuple[str, ...] = get_args(AggregatorName)
POSITIONS: tuple[str, ...] = get_args(PositionRule)
"""Every position rule by name (``positions=`` of ``steering`` / ``steer``)."""
OPERATOR_NAMES: tuple[str, ...] = get_args(OperatorName)
"""Every named operator (``operator=`` of ``steering`` / ``steer``; a callable is also accepted)."""
SITES: tuple[str, ...] = get_args(SiteName)
"""Every site (``site=`` of ``SteeringVector.train``): block output, attention output, MLP output."""
