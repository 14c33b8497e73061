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
import dataclasses
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _sae_flux_shared.cliargs import add_dataclass_arguments, dataclass_from_args
from _sae_flux_shared.usererror import OneLineParser, UserError, read_text, run_command
from itda.build_config import STREAM_KEY, BuildConfig

if TYPE_CHECKING:
    from itda.model import ITDA

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The ``itda`` argument parser with every subcommand (light: no torch, no sae_lens)."""
    parser = OneLineParser(prog="itda", description=__doc__.splitlines()[0])
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
        p.add_argument("--resume", action="store_true",
                       help="continue the build in --out from its newest checkpoint (or start it)")
        p.add_argument("--checkpoint-every", type=int, default=16, metavar="BATCHES",
                       help="commit a checkpoint to OUT/checkpoints every this many batches "
                            "(0: never; default: 16)")
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        add_dataclass_arguments(p, BuildConfig)
    return parser


def _run(args: argparse.Namespace) -> tuple[ITDA, bool]:
    """Build (or resume) the dictionary of ``args``; True when it is new and must be saved.

    Checkpoints go to ``OUT/checkpoints`` every ``--checkpoint-every`` batches
    (:mod:`itda.checkpoint`); ``--resume`` continues from the newest saved progress, or starts
    afresh when nothing was saved.
    """
    from itda import checkpoint, sources  # dispatch: torch and sae_lens load here, not for --help
    from itda.build import build

    # dispatch: the Flux cache source reads sae_flux's cache format; the itda library never
    # imports sae_flux, only this console script, which sits on top of every package
    from sae_flux import itda_build

    config = dataclass_from_args(BuildConfig, args)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out)
    batch_size = args.batch_size or (4096 if args.command == "build" else 8)
    if args.command == "build":
        batches, meta = itda_build.cache_batches(args.cache, args.hook, batch_size)
    else:
        texts = _read_texts(args.texts)
        batches, meta = sources.lm_stream(_load_lm(args.model), texts, args.layer, batch_size, args.max_length)
    settings = {"build": dataclasses.asdict(config), "stream": meta[STREAM_KEY]}
    if not args.resume and checkpoint.checkpoints(out):
        raise FileExistsError(f"{out} holds an unfinished ITDA build: pass --resume (or use a new directory)")
    point = checkpoint.resume_point(out, settings, config.max_atoms) if args.resume else None
    resume = None if point is None else (point.state or point.dictionary)
    itda = build(
        sources.skip_seen(batches, resume), config, resume=resume, progress=not args.no_progress,
        metadata=meta, checkpoint=lambda state: checkpoint.save_checkpoint(out, state, settings),
        checkpoint_every=args.checkpoint_every,
    )
    new = point is None or itda is not point.dictionary
    if new and args.command == "build":
        itda_build.measure_cache_firing(itda, args.cache, args.hook, batch_size, args.sparsity_tokens)
    return itda, new


def _read_texts(path: str) -> list[str]:
    texts = [line for line in read_text(path, "texts file").splitlines() if line.strip()]
    if not texts:
        raise UserError(f"texts file {path} holds no non-empty lines")
    return texts


def _load_lm(name: str) -> Any:
    import nnsight

    return nnsight.LanguageModel(name, dispatch=True)


def _build(args: argparse.Namespace) -> int:
    """Run the build and save it; a failed batch saves the atoms built so far, then refuses."""
    from itda.build import BuildError  # dispatch: after parsing, so --help stays light

    try:
        itda, new = _run(args)
    except BuildError as err:
        if err.partial is None:
            raise
        err.partial.save_model(args.out)
        raise UserError(f"{err}; the {err.partial.cfg.d_sae} atoms built so far were saved to "
                        f"{args.out} (rerun with --resume)") from err
    from itda.checkpoint import remove_checkpoints

    if new:
        itda.save_model(args.out)
        logger.info("saved %d atoms x %d to %s", itda.cfg.d_sae, itda.cfg.d_in, args.out)
    else:
        logger.info("%s is finished already (%d atoms); nothing to do", args.out, itda.cfg.d_sae)
    remove_checkpoints(args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``itda`` console script; returns the exit status (2: bad input)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return run_command(f"itda {args.command}", lambda: _build(args))


if __name__ == "__main__":
    sys.exit(main())
