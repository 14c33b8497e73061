"""The ``sae-flux`` command line: one subcommand per module of :mod:`sae_flux.commands`.

Example:
    $ sae-flux hooks --model tiny
    $ sae-flux cache --model tiny --prompts prompts.txt --hooks double.1.img --out cache
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

import sae_flux.commands as commands
from _sae_flux_shared.usererror import OneLineParser, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sae-flux", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def _quiet_libraries() -> None:
    """Hide the per-component loading bars of diffusers/transformers; ours stay."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    prog = " ".join(["sae-flux", args.command, *filter(None, [getattr(args, "interp_command", None)])])
    # IndexError: a feature or image id outside the index (sae_flux.interp.index)
    return run_command(prog, lambda: args.func(args), also=(IndexError,))


if __name__ == "__main__":
    sys.exit(main())
