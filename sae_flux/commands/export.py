"""``sae-flux export ITDA --out DIR``: an ITDA as sae_lens's matching_pursuit SAE, report as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from _sae_flux_shared.cliargs import add_dataclass_arguments, dataclass_from_args
from sae_flux.export_config import ExportConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export an ITDA as sae_lens's matching_pursuit SAE (loads without sae-flux)"
    )
    add_dataclass_arguments(parser, ExportConfig, positional=("dictionary",))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae_flux.export import export_matching_pursuit  # dispatch: torch and sae_lens load here

    cfg = dataclass_from_args(ExportConfig, args)
    report = export_matching_pursuit(cfg.dictionary, cfg.out, cfg.allow_approximate,
                                     cfg.check_cache, cfg.tokens)
    json.dump(report, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0
