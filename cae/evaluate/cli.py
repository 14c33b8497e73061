"""``cae eval``: the CAE paper's measurements (Hao et al. 2025, arXiv 2505.03189) in one command.

``cae.cli`` registers this subcommand through ``register(subparsers)`` (its ``PLUGINS``).

Example::

    cae eval --model organism:tiny --data kind.jsonl --corpus neutral.txt --out eval/ --seed 0
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from _sae_flux_shared.cliargs import add_dataclass_arguments, dataclass_from_args
from cae.evaluate.config import EvalConfig, nest_flat_record


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subparser (``func`` = ``run``): one option per :class:`EvalConfig`
    field, an option group per nested config, ``--config-path`` reads a ``results.json`` /
    ``seeds.json`` back (flat records of older runs included)."""
    p = subparsers.add_parser("eval", help="measure a steering vector: behaviour, sample "
                                           "efficiency, perplexity cost; JSON + plots + HTML")
    add_dataclass_arguments(p, EvalConfig)
    model = next(a for a in p._actions if a.dest == "model")
    model.nargs = "+"  # several models: a size comparison (cae.evaluate.sizes)
    model.help = "Hub id, local dir or organism:<size>; several: size comparison (required)"
    p.add_argument("--target-shift", type=float, default=0.05,
                   help="size comparison: behaviour shift at which perplexity cost is read "
                        "(default: 0.05)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> tuple[EvalConfig, list[str]]:
    """The run's config and its models (several: a size comparison) from parsed options."""
    models = list(args.model or [])
    single = argparse.Namespace(**{**vars(args), "model": models[0] if models else None})
    cfg = dataclass_from_args(EvalConfig, single, legacy=nest_flat_record)
    return cfg, models or [cfg.model]


def run(args: argparse.Namespace) -> int:
    """Run ``cae eval`` from parsed arguments; prints the summary as one JSON line."""
    # dispatch: torch, transformers and nnsight load here, not for --help
    from cae.evaluate.judge import JudgeError
    from cae.evaluate.report import evaluate
    from cae.evaluate.sizes import compare_sizes

    cfg, models = config_from_args(args)
    try:
        if len(models) > 1:
            rows = compare_sizes(cfg, models, args.target_shift)
            print(json.dumps({"out": cfg.out, "sizes": [asdict(r) for r in rows]}))
            return 0
        results = evaluate(cfg)
    except JudgeError as err:
        raise JudgeError(f"{err} (finished stages kept in {cfg.out})", err.partial) from err
    print(json.dumps({"out": cfg.out, **results["summary"]}))
    return 0
