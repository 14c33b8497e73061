"""Steering benchmark on the Flux organism: does adding a concept's direction make it appear?

For every colour and shape of the organism's world, the best-matching feature of a TopK SAE and
of an ITDA (by correlation with the concept's token masks, ``World.token_labels``) and the raw
difference-of-means direction are added, unit-normalised at equal norm (a multiple of the mean
token norm), on the object's tokens of held-out captions that do not mention the concept. The
pixel judge scores each image (``sae_flux.steering.measure``): hit rate vs scale and vs the number
of steered first steps, pixel change outside the region, share of on-palette pixels (degradation).
It also times the two ways of running an edit: the forward-hook context manager and an nnsight
trace. Prints ONE JSON object; with ``--docs`` also writes docs/steering-*.png grids.

Example:
    $ .venv/bin/python benchmarks/steering.py --work /tmp/steer-bench --docs > steering.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

# benchmarks/ holds itda.py and cae.py: keep this folder off sys.path so `import itda` is the package
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from sae_flux.cache import CacheConfig, load_flux, write_cache  # noqa: E402
from sae_flux.dictionary import load_dictionary  # noqa: E402
from sae_flux.itda_build import build_from_cache  # noqa: E402
from sae_flux.organism.world import prompts  # noqa: E402
from sae_flux.steer import add, feature_direction, make_steering, steer_trace, steering  # noqa: E402
from sae_flux.steering.concepts import (  # noqa: E402
    CONCEPTS,
    best_features,
    concept_tokens_from_cache,
    difference_of_means,
)
from sae_flux.steering.grid import default_steps, grid_image  # noqa: E402
from sae_flux.steering.measure import Condition, summarise, sweep, targets  # noqa: E402

logger = logging.getLogger("benchmarks.steering")


def build_dictionaries(flux: Any, args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """A step-0 cache of ``--prompts`` training captions, a TopK SAE and an ITDA on it."""
    import itda
    from sae_flux.train import DataConfig, DictionaryConfig, OptimConfig, TrainConfig, train_sae

    (work / "prompts.txt").write_text("\n".join(prompts(args.prompts, seed=args.seed)) + "\n")
    write_cache(CacheConfig(model=args.model, prompts=str(work / "prompts.txt"), hooks=[args.hook],
                            out=str(work / "cache"), steps=[0], seed=args.seed, batch_size=32,
                            shard_prompts=128), flux=flux)
    built = {"itda": work / "itda", "sae": work / "sae"}
    config = itda.BuildConfig(target_l0=args.itda_l0, loss_threshold=args.itda_threshold, seed=args.seed,
                              max_atoms=8192)
    build_from_cache(work / "cache", config, batch_size=256, progress=False).save_model(built["itda"])
    train_sae(TrainConfig(
        out=str(built["sae"]),
        data=DataConfig(cache=str(work / "cache"), buffer_tokens=65_536),
        sae=DictionaryConfig(architecture="topk", k=args.sae_k, expansion_factor=args.sae_expansion,
                             normalize="whiten", normalize_tokens=16_384),
        optim=OptimConfig(total_tokens=args.sae_tokens, batch_size=1024, lr=1e-3, seed=args.seed),
        eval_tokens=8192, log_every=100,
    ))
    return built


def time_paths(flux: Any, hook: str, reps: int = 5) -> dict[str, float]:
    """Fastest CPU seconds (process time: least disturbed by other processes) of one 8-prompt generation: bare, hook-steered, nnsight-steered, nnsight-empty."""
    texts = prompts(8, seed=99, split="heldout")
    edit = add(torch.randn(flux.d_model), 0.8, relative=True, steps=range(4))
    n = flux.defaults.num_inference_steps
    kwargs = flux.generation_kwargs()

    def bare() -> None:
        flux.generate(texts)

    def hooked() -> None:
        with steering(flux, hook, [edit]):
            flux.generate(texts)

    def traced(empty: bool = False) -> None:
        plan = make_steering(flux, hook, [edit])
        with flux.model.generate(texts, generator=flux.generators(0, range(8)), output_type="pt", **kwargs) as tr:
            if not empty:
                for step in tr.iter[0:n]:
                    steer_trace(flux.model, plan, step)

    runs: dict[str, list[float]] = {"bare": [], "hook": [], "nnsight": [], "nnsight_empty": []}
    fns = {"bare": bare, "hook": hooked, "nnsight": traced, "nnsight_empty": lambda: traced(True)}
    for fn in fns.values():
        fn()  # warm up
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            runs[name].append(time.process_time() - start)
    return {name: min(v) for name, v in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism")
    parser.add_argument("--hook", default=None, help="default: image stream of the middle double block")
    parser.add_argument("--work", default="steer-bench", help="working directory (cache, dictionaries, rows)")
    parser.add_argument("--prompts", type=int, default=512, help="training captions cached for the dictionaries")
    parser.add_argument("--match-scenes", type=int, default=256, help="cached scenes used to match features")
    parser.add_argument("--targets", type=int, default=8, help="held-out captions steered per concept")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.4, 0.8, 1.6, 3.2])
    parser.add_argument("--steps-scale", type=float, default=1.6, help="scale of the number-of-steps sweep")
    parser.add_argument("--sae-k", type=int, default=8)
    parser.add_argument("--sae-expansion", type=int, default=8)
    parser.add_argument("--sae-tokens", type=int, default=300_000)
    parser.add_argument("--itda-l0", type=int, default=8)
    parser.add_argument("--itda-threshold", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--docs", action="store_true", help="write docs/steering-<concept>.png grids")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(2)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    flux = load_flux(args.model)
    n_steps = flux.defaults.num_inference_steps
    args.hook = args.hook or f"double.{flux.block_counts[0] // 2}.img"
    started = time.perf_counter()
    paths = build_dictionaries(flux, args, work)
    build_seconds = time.perf_counter() - started
    dictionaries = {name: load_dictionary(path) for name, path in paths.items()}
    data = concept_tokens_from_cache(work / "cache", n_scenes=min(args.match_scenes, args.prompts), seed=args.seed)
    early = default_steps(n_steps)
    step_counts = sorted({1, max(1, n_steps // 4), early, n_steps})
    rows: list[dict[str, Any]] = []
    matches: dict[str, dict[str, Any]] = {}
    for concept in CONCEPTS:
        found = {name: best_features(d, data, (concept,))[concept] for name, d in dictionaries.items()}
        matches[concept] = {name: {"feature": m.feature, "correlation": round(m.correlation, 4)} for name, m in found.items()}
        directions = {name: feature_direction(dictionaries[name], m.feature) for name, m in found.items()}
        directions["diff-of-means"] = difference_of_means(data, concept)
        conditions = [Condition(m, d, s, early) for m, d in directions.items() for s in args.scales]
        conditions += [Condition(m, d, args.steps_scale, k) for m, d in directions.items()
                       for k in step_counts if not (k == early and args.steps_scale in args.scales)]
        result = sweep(flux, args.hook, targets(concept, args.targets, seed=args.seed), conditions, args.seed)
        rows += result.rows
        logger.info("%s: %s", concept, [(r["method"], r["scale"], r["first_steps"], r["hit"]) for r in result.rows])
        if args.docs:
            keep = [0] + [i + 1 for i, c in enumerate(conditions) if c.first_steps == early]
            grid = [[result.images[j][i] for j in keep] for i in range(min(4, args.targets))]
            labels = ["none"] + [f"{conditions[j - 1].method[:4]} x{conditions[j - 1].scale:g}" for j in keep[1:]]
            grid_image(grid, labels, cell=48).save(Path("docs") / f"steering-{concept}.png")
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    baseline = {r["concept"]: r["hit"] for r in rows if r["method"] == "none"}
    by_scale = summarise([r for r in rows if r["first_steps"] in (0, early)], ("method", "scale"))
    by_steps = summarise([r for r in rows if r["scale"] == args.steps_scale], ("method", "first_steps"))
    timing = time_paths(flux, args.hook)
    clean = {(r["method"], r["first_steps"]): r["clean"] for r in by_steps}
    record = {
        "model": flux.model_id, "hook": args.hook, "num_inference_steps": n_steps, "early_steps": early,
        "targets_per_concept": args.targets, "concepts": list(CONCEPTS), "steps_scale": args.steps_scale,
        "dictionaries": {name: {"architecture": d.cfg.architecture(), "d_sae": d.cfg.d_sae} for name, d in dictionaries.items()},
        "build_seconds": round(build_seconds, 1),
        "matches": matches,
        "baseline_hit": round(sum(baseline.values()) / len(baseline), 4),
        "by_scale": by_scale,
        "by_steps": by_steps,
        "all_vs_early_clean_ratio": {m: round(clean[(m, n_steps)] / max(clean[(m, early)], 1e-9), 4)
                                     for m in ("sae", "itda", "diff-of-means")},
        "cpu_seconds_per_8_images": {k: round(v, 3) for k, v in timing.items()},
        "hook_over_bare": round(timing["hook"] / timing["bare"], 3),
        "nnsight_over_hook": round(timing["nnsight"] / timing["hook"], 3),
    }
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
