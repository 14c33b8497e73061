"""``sae-flux cache``: write an activation cache (see :mod:`sae_flux.cache`)."""

from __future__ import annotations

import argparse
import logging

from _sae_flux_cliargs import add_dataclass_arguments, dataclass_from_args
from sae_flux.cache_config import CacheConfig

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cache", help="cache hook-point activations to disk")
    add_dataclass_arguments(parser, CacheConfig)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted cache")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae_flux.cache import write_cache  # dispatch: torch and the pipeline load here

    cfg = dataclass_from_args(CacheConfig, args)
    manifest = write_cache(cfg, resume=args.resume)
    for hook in manifest.hooks:
        logger.info("%s: %d tokens x %d in %s", hook, manifest.tokens(hook), manifest.widths[hook], cfg.out)
    return 0
