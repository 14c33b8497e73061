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

from typing import TYPE_CHECKING

from _sae_flux_shared.lazy import lazy_exports

if TYPE_CHECKING:
    from cae.evaluate.behaviour import BehaviourConfig, behaviour, layer_sweep
    from cae.evaluate.config import (
        AdversarialStage,
        EvalConfig,
        EvalDatasets,
        JudgeConfig,
        Placement,
        PromptBaseline,
        SweepConfig,
    )
    from cae.evaluate.efficiency import EfficiencyConfig, efficiency_curve, model_efficiency
    from cae.evaluate.perplexity import PerplexityConfig, perplexity_cost
    from cae.evaluate.report import evaluate

_EXPORTS = {
    "AdversarialStage": "cae.evaluate.config",
    "BehaviourConfig": "cae.evaluate.behaviour",
    "EfficiencyConfig": "cae.evaluate.efficiency",
    "EvalConfig": "cae.evaluate.config",
    "EvalDatasets": "cae.evaluate.config",
    "JudgeConfig": "cae.evaluate.config",
    "PerplexityConfig": "cae.evaluate.perplexity",
    "Placement": "cae.evaluate.config",
    "PromptBaseline": "cae.evaluate.config",
    "SweepConfig": "cae.evaluate.config",
    "behaviour": "cae.evaluate.behaviour",
    "efficiency_curve": "cae.evaluate.efficiency",
    "evaluate": "cae.evaluate.report",
    "layer_sweep": "cae.evaluate.behaviour",
    "model_efficiency": "cae.evaluate.efficiency",
    "perplexity_cost": "cae.evaluate.perplexity",
}
"""Public name (each of ``__all__``) -> the module that defines it."""

__all__ = [
    "AdversarialStage",
    "BehaviourConfig",
    "EfficiencyConfig",
    "EvalConfig",
    "EvalDatasets",
    "JudgeConfig",
    "PerplexityConfig",
    "Placement",
    "PromptBaseline",
    "SweepConfig",
    "behaviour",
    "efficiency_curve",
    "evaluate",
    "layer_sweep",
    "model_efficiency",
    "perplexity_cost",
]

lazy_exports(__name__, _EXPORTS)
