"""The ``itda`` command line: build ITDA dictionaries (Leask et al., ICML 2025, arXiv 2505.17769).

Examples::

    itda build --cache cache/ --target-l0 32 --loss-threshold 0.3 --out dict/
    itda build-lm --model path/to/llama --texts texts.txt --layer 6 --out dict/
    itda build --cache cache/ --out dict/ --resume      # continue a stopped build

Every ``BuildConfig`` field is a flag (``--dedup-cosine``, ``--encoder gp``, ...). A bad
batch stops the build but the dictionary built so far is saved to ``--out`` first.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _sae_flux_cliargs import add_dataclass_arguments, dataclass_from_args
from itda.build_config import BuildConfig

if TYPE_CHECKING:
    from itda.model import ITDA

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The ``itda`` argument parser with every subcommand (light: no torch, no sae_lens)."""
    parser = argparse.ArgumentParser(prog="itda", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cache = sub.add_parser("build", help="build from a Flux activation cache (sae-flux cache)")
    cache.add_argument("--cache", required=True, help="activation cache directory")
    cache.add_argument("--hook", default=None, help="hook to read (default: the only one)")
    cache.add_argument(
        "--sparsity-tokens",
        type=int,
        default=65_536,
        help="measure atom firing rates (sparsity.safetensors) on this many build tokens; 0: skip",
    )
    lm = sub.add_parser("build-lm", help="build on a Hugging Face causal LM's residual stream")
    lm.add_argument("--model", required=True, help="HF model id or local directory")
    lm.add_argument("--texts", required=True, help="UTF-8 file, one text per line")
    lm.add_argument("--layer", type=int, required=True, help="decoder layer index")
    lm.add_argument("--max-length", type=int, default=256, help="tokens per text (truncated)")
    for p in (cache, lm):
        p.add_argument("--out", required=True, help="output directory (SAELens layout)")
        p.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="tokens (build) or texts (build-lm) per batch",
        )
        p.add_argument("--resume", action="store_true", help="continue the dictionary in --out")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        add_dataclass_arguments(p, BuildConfig)
    return parser


def _run(args: argparse.Namespace) -> ITDA:
    from itda import sources  # dispatch: torch and sae_lens load here, not for --help
    from itda.model import ITDA

    config = dataclass_from_args(BuildConfig, args)
    resume = ITDA.load(args.out) if args.resume else None
    progress = not args.no_progress
    if args.command == "build":
        return sources.build_from_cache(
            args.cache,
            config,
            hook=args.hook,
            batch_size=args.batch_size or 4096,
            resume=resume,
            progress=progress,
            sparsity_tokens=args.sparsity_tokens,
        )
    texts = _read_texts(args.texts)
    model = _load_lm(args.model)
    return sources.build_from_lm(
        model,
        texts,
        args.layer,
        config,
        batch_size=args.batch_size or 8,
        max_length=args.max_length,
        resume=resume,
        progress=progress,
    )


def _read_texts(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"texts file {file} not found")
    texts = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"texts file {file} holds no non-empty lines")
    return texts


def _load_lm(name: str) -> Any:
    import nnsight

    return nnsight.LanguageModel(name, dispatch=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``itda`` console script; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from itda.build import BuildError  # dispatch: after parsing, so --help stays light

    try:
        itda = _run(args)
    except BuildError as err:
        if err.partial is not None:
            err.partial.save_model(args.out)
            logger.error(
                "%s; the %d atoms built so far were saved to %s (rerun with --resume)",
                err,
                err.partial.cfg.d_sae,
                args.out,
            )
        else:
            logger.error("%s", err)
        return 2
    except (ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    itda.save_model(args.out)
    logger.info("saved %d atoms x %d to %s", itda.cfg.d_sae, itda.cfg.d_in, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
