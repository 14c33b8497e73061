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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae-flux", description=__doc__.splitlines()[0])
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
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as err:
        logging.getLogger("sae_flux").error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
