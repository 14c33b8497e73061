"""``sae-flux publish DICT_DIR... --repo org/name``: upload to the Hub in SAELens's layout."""

from __future__ import annotations

import argparse
import logging

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

    url = publish(dataclass_from_args(PublishConfig, args))
    logger.info("load with SAE.from_pretrained(%r, <sae_id>); commit: %s", args.repo, url)
    return 0
