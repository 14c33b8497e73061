"""``sae-flux eval DICT_DIR``: project metrics of an SAE or ITDA dictionary, printed as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from _sae_flux_cliargs import add_dataclass_arguments, dataclass_from_args
from sae_flux.evaluate_config import EvalConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="FVU, L0, dead fraction, density (and downstream recovery) of a dictionary"
    )
    add_dataclass_arguments(parser, EvalConfig, positional=("dictionary",))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae_flux.evaluate import evaluate_dictionary  # dispatch: torch and sae_lens load here

    report = evaluate_dictionary(dataclass_from_args(EvalConfig, args))
    json.dump(report, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0
