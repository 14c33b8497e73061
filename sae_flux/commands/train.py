"""``sae-flux train``: train an SAE on Flux activations (see :mod:`sae_flux.train`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

from sae_flux.cliargs import add_dataclass_arguments, dataclass_from_args
from sae_flux.train_config import DataConfig, DictionaryConfig, OptimConfig, TrainConfig

logger = logging.getLogger(__name__)
_NESTED = {"data": DataConfig, "sae": DictionaryConfig, "optim": OptimConfig}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train an SAE (any sae_lens training architecture) on cached or streamed activations"
    )
    add_dataclass_arguments(parser, TrainConfig)
    for cls in _NESTED.values():
        add_dataclass_arguments(parser, cls)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    nested: dict[str, Any] = {name: dataclass_from_args(cls, args) for name, cls in _NESTED.items()}
    top = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in _NESTED}
    return TrainConfig(**top, **nested)


def run(args: argparse.Namespace) -> int:
    from sae_flux.train import train_sae  # dispatch: torch and sae_lens load here

    result = train_sae(config_from_args(args), resume=args.resume)
    m = result.metrics
    logger.info("%s: FVU %.4f, explained variance %.4f, L0 %.2f, dead %.4f (window %d tokens)",
                result.path, m.fvu, m.explained_variance, m.l0, m.dead_fraction, m.tokens)
    return 0
