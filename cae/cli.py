"""The ``cae`` command line: train a steering vector, generate with it.

Implements the CAA workflow (Rimsky et al. 2024) studied by the CAE paper (Hao et al.
2025): ``cae train`` reads contrastive pairs (MWE JSONL or CAA JSON) and writes a vector
directory; ``cae generate`` adds it while the model generates. ``--model`` is a Hub id, a
local directory or ``organism:<size>``. Other subcommands (``cae eval``) register
themselves from ``cae.evaluate.cli`` when that package is present.

Examples::

    cae train --model organism:small --data kind.jsonl --layers 1 --out vectors/kind
    cae generate --model organism:small --vector vectors/kind --multiplier 4 --prompt "story :"
    cae export --vector vectors/kind --out kind.gguf --model-hint llama
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
from collections.abc import Sequence

from _sae_flux_shared.usererror import OneLineParser, run_command
from cae.names import AGGREGATOR_NAMES, OPERATOR_NAMES, POSITIONS, SITES
from cae.read import READ_RULES

logger = logging.getLogger(__name__)
PLUGINS = ("cae.evaluate.cli",)
"""Modules that may add subcommands through ``register(subparsers)``."""


def _train(args: argparse.Namespace) -> int:
    from cae.model import load_language_model
    from cae.pairs import load_pairs
    from cae.vector import SteeringVector

    pairs = load_pairs(args.data)
    if args.limit is not None:
        pairs = pairs[: args.limit]
    lm = load_language_model(args.model, args.dtype, args.device)
    sv = SteeringVector.train(lm, pairs, args.layers, read=args.read, aggregator=args.aggregator,
                              batch_size=args.batch_size, site=args.site)
    out = sv.save(args.out)
    norms = {layer: round(float(v.norm()), 4) for layer, v in sv.vectors.items()}
    print(json.dumps({"out": str(out), "n_pairs": len(pairs), "norms": norms}))
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch  # dispatch: torch loads with the model, not for --help

    from cae.apply import check_multiplier, resolve_operator
    from cae.llamacpp import from_gguf
    from cae.model import input_device, load_language_model
    from cae.vector import SteeringVector

    multiplier = check_multiplier(args.multiplier)
    resolve_operator(args.operator)
    lm = load_language_model(args.model, args.dtype, args.device)
    sv = (from_gguf(args.vector, lm) if args.vector.endswith(".gguf")
          else SteeringVector.from_pretrained(args.vector))
    tokenizer = lm.tokenizer
    enc = tokenizer(args.prompt, return_tensors="pt").to(input_device(lm))
    torch.manual_seed(args.seed)
    settings = {"max_new_tokens": args.max_new_tokens, "do_sample": args.sample,
                "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad(), sv.apply(lm, multiplier, positions=args.positions, force=args.force,
                                   operator=args.operator), \
            lm.generate(dict(enc), **settings) as tracer:  # nnsight's public generation
        ids = tracer.result.save()
    print(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return 0


def _export(args: argparse.Namespace) -> int:
    from cae.llamacpp import to_gguf
    from cae.vector import SteeringVector

    sv = SteeringVector.from_pretrained(args.vector)
    out = to_gguf(sv, args.out, model_hint=args.model_hint, multiplier=args.multiplier)
    print(json.dumps({"out": str(out), "layers": list(sv.vectors)}))
    return 0


def _placement_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cpu)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")


def build_parser() -> argparse.ArgumentParser:
    """The ``cae`` argument parser with every subcommand."""
    parser = OneLineParser(prog="cae", description="Steering vectors for HF LMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a steering vector from contrastive pairs")
    train.add_argument("--model", required=True, help="Hub id, local dir or organism:<size>")
    train.add_argument("--data", required=True, help="MWE .jsonl or CAA .json file")
    train.add_argument("--layers", type=int, nargs="+", required=True, help="decoder blocks")
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--read", default="answer", choices=sorted(READ_RULES))
    train.add_argument("--aggregator", default="mean", choices=sorted(AGGREGATOR_NAMES))
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    train.add_argument("--site", default="block", choices=list(SITES),
                       help="block output (residual stream), attention or MLP output")
    _placement_flags(train)
    train.set_defaults(func=_train)

    gen = sub.add_parser("generate", help="generate with a steering vector added")
    gen.add_argument("--model", required=True, help="Hub id, local dir or organism:<size>")
    gen.add_argument("--vector", required=True,
                     help="vector directory, Hub repo id or llama.cpp control vector (.gguf)")
    gen.add_argument("--multiplier", type=float, default=1.0)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--positions", default="from_prompt_end", choices=list(POSITIONS))
    gen.add_argument("--max-new-tokens", type=int, default=40)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--force", action="store_true", help="apply to another model id")
    gen.add_argument("--operator", default="add", choices=list(OPERATOR_NAMES))
    _placement_flags(gen)
    gen.set_defaults(func=_generate)

    export = sub.add_parser("export", help="write a vector as a llama.cpp control vector (GGUF)")
    export.add_argument("--vector", required=True, help="vector directory or Hub repo id")
    export.add_argument("--out", required=True, help="output .gguf file")
    export.add_argument("--model-hint", default=None,
                        help="controlvector.model_hint (llama.cpp architecture, e.g. llama)")
    export.add_argument("--multiplier", type=float, default=1.0, help="scale baked into the file")
    export.set_defaults(func=_export)

    for name in PLUGINS:
        if importlib.util.find_spec(name.rsplit(".", 1)[0]) and importlib.util.find_spec(name):
            importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cae`` console script; bad input exits with status 2."""
    logging.basicConfig(level=logging.WARNING)
    args = build_parser().parse_args(argv)
    # TypeError: a model of a kind cae cannot steer (cae.model.hf_module)
    return run_command(f"cae {args.command}", lambda: args.func(args), also=(TypeError,))


if __name__ == "__main__":
    raise SystemExit(main())
