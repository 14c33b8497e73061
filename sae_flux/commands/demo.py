"""``sae-flux demo``: the main job on the embedded organism (see :mod:`sae_flux.demo`)."""

from __future__ import annotations

import argparse
import logging

from _sae_flux_cliargs import add_dataclass_arguments, dataclass_from_args
from sae_flux.demo_config import DemoConfig

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the main job on the organism and write a report")
    add_dataclass_arguments(parser, DemoConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae_flux.demo import run_demo  # dispatch: torch and the pipeline load here

    index = run_demo(dataclass_from_args(DemoConfig, args))
    logger.info("report written: %s", index.resolve())
    return 0
