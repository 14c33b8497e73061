"""``sae-flux steer``: a grid PNG of prompts x scales (see :mod:`sae_flux.steering.grid`)."""

from __future__ import annotations

import argparse

from _sae_flux_cliargs import add_dataclass_arguments, dataclass_from_args
from sae_flux.steering.config import SteerConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "steer", help="steer generation with dictionary features; write a grid PNG of prompts x scales"
    )
    add_dataclass_arguments(parser, SteerConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae_flux.steering.grid import run_steer  # dispatch: torch and the pipeline load here

    run_steer(dataclass_from_args(SteerConfig, args))
    return 0
