"""Benchmark: attribute accuracy of the Flux organism on held-out captions, judged from pixels.

Generates single-object scenes from the world's held-out caption templates with the shipped
organism (default steps, guidance 0), judges each image with ``sae_flux.organism.judge`` and
prints one JSON object of per-attribute accuracies (ratios), together with the judge's own
accuracy on the world's clean renders of the same scenes (its ceiling).

    python benchmarks/organism.py --n 240 --grid docs/organism-samples.png
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from diffusers import FluxPipeline

from sae_flux.organism import weights_dir
from sae_flux.organism.evaluate import (
    evaluate_organism,
    evaluate_pairs,
    pipeline_defaults,
    sample_grid,
)
from sae_flux.organism.judge import accuracy, judge


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="organism dir (shipped)")
    parser.add_argument("--n", type=int, default=240, help="held-out captions to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: saved)")
    parser.add_argument("--pairs", type=int, default=60, help="two-object captions to generate (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grid", type=Path, default=None, help="write a PNG sample grid here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pipe = FluxPipeline.from_pretrained(weights_dir(args.weights))
    load_seconds = time.perf_counter() - start
    steps = args.steps or pipeline_defaults(pipe).num_inference_steps
    result = evaluate_organism(pipe, n=args.n, seed=args.seed, num_inference_steps=steps)
    clean = accuracy([judge(s.image_HW3) for s in result.samples],
                     [s.scene for s in result.samples])
    pairs = (evaluate_pairs(pipe, n=args.pairs, seed=args.seed, num_inference_steps=steps)
             if args.pairs > 0 else {})
    if args.grid:
        sample_grid(result, args.grid)
    report = {
        "n": args.n,
        "num_inference_steps": steps,
        "split": "heldout",
        **{f"{name}_accuracy": round(value, 4) for name, value in result.accuracy.items()},
        "mean_judge_confidence": round(
            sum(v.confidence for v in result.verdicts) / len(result.verdicts), 4),
        **{f"two_object_{name}": round(value, 4) for name, value in pairs.items()},
        "judge_on_clean_renders": {k: round(v, 4) for k, v in clean.items()},
        "load_seconds": round(load_seconds, 2),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
