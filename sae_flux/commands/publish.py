"""``sae-flux publish DICT_DIR... --repo org/name``: upload to the Hub in SAELens's layout."""

from __future__ import annotations

import argparse
import logging
import sys

from _sae_flux_shared.cliargs import add_dataclass_arguments, dataclass_from_args
from sae_flux.publish_config import PublishConfig

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "publish", help="upload SAE / ITDA dictionaries to the Hugging Face Hub (SAELens layout + model card)"
    )
    add_dataclass_arguments(parser, PublishConfig, positional=("dictionaries",))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae_flux.publish import publish  # dispatch: sae_lens and huggingface_hub load here

    cfg = dataclass_from_args(PublishConfig, args)
    result = publish(cfg)
    if cfg.dry_run:
        sys.stdout.write(result + "\n")  # the plan: files, release block and model card
        return 0
    logger.info("load with SAE.from_pretrained(%r, <sae_id>); commit: %s", args.repo, result)
    return 0
