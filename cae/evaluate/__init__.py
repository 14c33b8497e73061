"""cae.evaluate: the CAE paper's evaluation (Hao et al. 2025, arXiv 2505.03189) of a steering vector.

Behaviour metrics and reliability (Tan et al. 2024), layer sweep, sample efficiency,
perplexity cost, in- vs out-of-distribution effects with pluggable judges, adversarial
inputs, model-size comparison, and the ``cae eval`` report (``docs/cae-eval.md``).

``import cae.evaluate`` is light: the public names below load torch on first use (PEP 562),
so ``cae eval --help`` starts at once.

Example:
    >>> from cae.evaluate import EvalConfig, SweepConfig, evaluate
    >>> from cae.organism.corpus import write_mwe_jsonl
    >>> write_mwe_jsonl("/tmp/kind.jsonl", "kind", n=32)
    >>> res = evaluate(EvalConfig("organism:tiny", "/tmp/kind.jsonl", "/tmp/eval",
    ...                           sweep=SweepConfig(multipliers=[-4.0, 0.0, 4.0], draws=2)))
    >>> res["summary"]["n_test"]
    8
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cae.evaluate.behaviour import BehaviourConfig, behaviour, layer_sweep
    from cae.evaluate.efficiency import EfficiencyConfig, efficiency_curve, model_efficiency
    from cae.evaluate.perplexity import PerplexityConfig, perplexity_cost
    from cae.evaluate.report import EvalConfig, evaluate

_EXPORTS = {
    "BehaviourConfig": "cae.evaluate.behaviour",
    "EfficiencyConfig": "cae.evaluate.efficiency",
    "EvalConfig": "cae.evaluate.report",
    "PerplexityConfig": "cae.evaluate.perplexity",
    "behaviour": "cae.evaluate.behaviour",
    "efficiency_curve": "cae.evaluate.efficiency",
    "evaluate": "cae.evaluate.report",
    "layer_sweep": "cae.evaluate.behaviour",
    "model_efficiency": "cae.evaluate.efficiency",
    "perplexity_cost": "cae.evaluate.perplexity",
}
"""Public name (each of ``__all__``) -> the module that defines it."""

__all__ = [
    "BehaviourConfig",
    "EfficiencyConfig",
    "EvalConfig",
    "PerplexityConfig",
    "behaviour",
    "efficiency_curve",
    "evaluate",
    "layer_sweep",
    "model_efficiency",
    "perplexity_cost",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Keeps ``cae.evaluate.behaviour`` the function: importing the submodule would rebind it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            return  # the submodule stays in sys.modules["cae.evaluate.behaviour"], as before
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
