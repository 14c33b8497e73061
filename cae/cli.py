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
from collections.abc import Callable, Sequence

from _sae_flux_shared.cliargs import add_dataclass_arguments, dataclass_from_args
from _sae_flux_shared.usererror import OneLineParser, run_command
from cae.config import GenerateConfig, GGUFExportConfig, TrainVectorConfig

logger = logging.getLogger(__name__)
PLUGINS = ("cae.evaluate.cli",)
"""Modules that may add subcommands through ``register(subparsers)``."""


def train_vector(cfg: TrainVectorConfig) -> dict[str, object]:
    """Run ``cae train``: the vector saved to ``cfg.out``; returns the printed report."""
    # dispatch: torch, transformers and nnsight load here, not for --help
    from cae.model import load_language_model
    from cae.pairs import load_pairs
    from cae.vector import SteeringVector

    pairs = load_pairs(cfg.data)
    if cfg.limit is not None:
        pairs = pairs[: cfg.limit]
    place = cfg.placement
    lm = load_language_model(cfg.model, place.dtype, place.device, place.device_map_value())
    sv = SteeringVector.train(lm, pairs, cfg.layers, read=cfg.read, aggregator=cfg.aggregator,
                              batch_size=cfg.batch_size, padding_side=cfg.padding_side,
                              normalize=cfg.normalize, site=cfg.site)
    out = sv.save(cfg.out)
    norms = {layer: round(float(v.norm()), 4) for layer, v in sv.vectors.items()}
    return {"out": str(out), "n_pairs": len(pairs), "norms": norms}


def generate_text(cfg: GenerateConfig) -> str:
    """Run ``cae generate``: the continuation of ``cfg.prompt`` with the vector added."""
    import torch  # dispatch: torch loads with the model, not for --help

    from cae.apply import check_multiplier, resolve_operator
    from cae.llamacpp import from_gguf
    from cae.model import input_device, load_language_model
    from cae.vector import SteeringVector

    multiplier = check_multiplier(cfg.multiplier)
    resolve_operator(cfg.operator)
    place = cfg.placement
    lm = load_language_model(cfg.model, place.dtype, place.device, place.device_map_value())
    sv = (from_gguf(cfg.vector, lm) if cfg.vector.endswith(".gguf")
          else SteeringVector.from_pretrained(cfg.vector))
    tokenizer = lm.tokenizer
    enc = tokenizer(cfg.prompt, return_tensors="pt").to(input_device(lm))
    torch.manual_seed(cfg.seed)
    settings = {"max_new_tokens": cfg.max_new_tokens, "do_sample": cfg.sample,
                "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad(), sv.apply(lm, multiplier, positions=cfg.positions, force=cfg.force,
                                   operator=cfg.operator), \
            lm.generate(dict(enc), **settings) as tracer:  # nnsight's public generation
        ids = tracer.result.save()
    return str(tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))


def export_gguf(cfg: GGUFExportConfig) -> dict[str, object]:
    """Run ``cae export``: the vector written as a llama.cpp control vector."""
    from cae.llamacpp import to_gguf
    from cae.vector import SteeringVector

    sv = SteeringVector.from_pretrained(cfg.vector)
    out = to_gguf(sv, cfg.out, model_hint=cfg.model_hint, multiplier=cfg.multiplier)
    return {"out": str(out), "layers": list(sv.vectors)}


COMMANDS = {
    "train": (TrainVectorConfig, "train a steering vector from contrastive pairs",
              lambda cfg: json.dumps(train_vector(cfg))),
    "generate": (GenerateConfig, "generate with a steering vector added", generate_text),
    "export": (GGUFExportConfig, "write a vector as a llama.cpp control vector (GGUF)",
               lambda cfg: json.dumps(export_gguf(cfg))),
}
"""Subcommand -> (its config, its help, the function printing its result)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``cae`` argument parser with every subcommand (options from each command's config)."""
    parser = OneLineParser(prog="cae", description="Steering vectors for HF LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (config, help_text, _) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text)
        add_dataclass_arguments(command, config)
        command.set_defaults(func=_runner(name))
    for plugin in PLUGINS:
        if importlib.util.find_spec(plugin.rsplit(".", 1)[0]) and importlib.util.find_spec(plugin):
            importlib.import_module(plugin).register(sub)
    return parser


def _runner(name: str) -> Callable[[argparse.Namespace], int]:
    config, _, run = COMMANDS[name]

    def run_from_args(args: argparse.Namespace) -> int:
        print(run(dataclass_from_args(config, args)))
        return 0

    return run_from_args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cae`` console script; bad input exits with status 2."""
    logging.basicConfig(level=logging.WARNING)
    args = build_parser().parse_args(argv)
    # TypeError: a model of a kind cae cannot steer (cae.model.hf_module)
    return run_command(f"cae {args.command}", lambda: args.func(args), also=(TypeError,))


if __name__ == "__main__":
    raise SystemExit(main())
