"""cae.evaluate: the CAE paper's evaluation (Hao et al. 2025, arXiv 2505.03189) of a steering vector.

Behaviour metrics and reliability (Tan et al. 2024), layer sweep, sample efficiency,
perplexity cost, in- vs out-of-distribution effects with pluggable judges, adversarial
inputs, model-size comparison, and the ``cae eval`` report (``docs/cae-eval.md``).

Example:
    >>> from cae.evaluate import EvalConfig, evaluate
    >>> from cae.organism.corpus import write_mwe_jsonl
    >>> write_mwe_jsonl("/tmp/kind.jsonl", "kind", n=32)
    >>> res = evaluate(EvalConfig("organism:tiny", "/tmp/kind.jsonl", "/tmp/eval",
    ...                           multipliers=[-4.0, 0.0, 4.0], draws=2))
    >>> res["summary"]["n_test"]
    8
"""

from cae.evaluate.behaviour import BehaviourConfig, behaviour, layer_sweep
from cae.evaluate.efficiency import EfficiencyConfig, efficiency_curve, model_efficiency
from cae.evaluate.perplexity import PerplexityConfig, perplexity_cost
from cae.evaluate.report import EvalConfig, evaluate

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
