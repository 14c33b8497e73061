"""The names of cae's strategies, apart from their torch implementations.

``cae train --aggregator`` and ``cae generate / eval --positions`` offer these as choices, and
the CLI must build its parser without importing torch. The registries that hold the
implementations are keyed by exactly these names: :data:`cae.aggregators.AGGREGATORS` (tested)
and the position rules of :mod:`cae.apply`. Read rules need no torch and keep their one
registry, :data:`cae.read.READ_RULES`.

Example:
    >>> AGGREGATOR_NAMES, POSITIONS
    (('mean', 'pca', 'logistic'), ('all', 'from_prompt_end', 'generated'))
"""

from __future__ import annotations

from typing import Literal, get_args

AggregatorName = Literal["mean", "pca", "logistic"]
"""An aggregator of :data:`cae.aggregators.AGGREGATORS`."""
PositionRule = Literal["all", "from_prompt_end", "generated"]
"""Where :mod:`cae.apply` adds a vector (its module docstring defines each rule)."""

AGGREGATOR_NAMES: tuple[str, ...] = get_args(AggregatorName)
POSITIONS: tuple[str, ...] = get_args(PositionRule)
"""Every position rule by name (``positions=`` of ``steering`` / ``steer``)."""
