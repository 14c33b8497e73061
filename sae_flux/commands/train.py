"""``sae-flux train``: train an SAE on Flux activations (see :mod:`sae_flux.train`)."""

from __future__ import annotations

import argparse
import logging

from _sae_flux_cliargs import add_dataclass_arguments, dataclass_from_args
from sae_flux.train_config import TrainConfig

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train an SAE (any sae_lens training architecture) on cached or streamed activations"
    )
    add_dataclass_arguments(parser, TrainConfig)  # nested data / sae / optim configs as option groups
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return dataclass_from_args(TrainConfig, args)


def run(args: argparse.Namespace) -> int:
    from sae_flux.train import train_sae  # dispatch: torch and sae_lens load here

    result = train_sae(config_from_args(args), resume=args.resume)
    m = result.metrics
    logger.info("%s: FVU %.4f, explained variance %.4f, L0 %.2f, dead %.4f (window %d tokens)",
                result.path, m.fvu, m.explained_variance, m.l0, m.dead_fraction, m.tokens)
    return 0
