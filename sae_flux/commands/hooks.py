"""``sae-flux hooks``: list every hook point of a model, the ``.delta`` forms included."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("hooks", help="list the hook points of a model")
    parser.add_argument("--model", default="tiny", help="tiny, organism, a repo id or a directory")
    parser.add_argument("--no-delta", dest="delta", action="store_false",
                        help="leave out the .delta variants (block output minus block input)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sae_flux.cache import load_flux  # dispatch: torch and the pipeline load here

    flux = load_flux(args.model)
    n_double, n_single = flux.block_counts
    sys.stdout.write(f"# {flux.model_id}: {n_double} double, {n_single} single blocks, d_model {flux.d_model}\n")
    for name in flux.hook_points(delta=args.delta):
        sys.stdout.write(f"{name}\t{flux.resolve(name).module_path}\twidth={flux.width(name)}\n")
    return 0
