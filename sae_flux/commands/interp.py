"""``sae-flux interp``: the paper's pipeline as steps: index -> images -> explain -> detect -> render.

See :mod:`sae_flux.interp` and ``docs/interp.md``. Typical use::

    sae-flux interp index demo-out/cache --dictionary demo-out/dictionaries/sae-topk --out idx-sae
    sae-flux interp images idx-sae --prompts demo-out/prompts.txt --model organism
    sae-flux interp explain idx-sae --prompts demo-out/prompts.txt --backend openai \\
        --base-url http://127.0.0.1:8000/v1 --vlm-model Qwen2.5-VL-7B --results expl.jsonl
    sae-flux interp detect idx-sae --prompts demo-out/prompts.txt --explanations expl.jsonl \\
        --results scores.jsonl     # detection, corrected detection, fuzzing; floor and ceiling
    sae-flux interp render idx-sae --prompts demo-out/prompts.txt --scores scores.jsonl --out browser
    sae-flux interp ground-truth idx-sae idx-mlp --prompts demo-out/prompts.txt --model organism --out gt
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _sae_flux_shared.cliargs import add_dataclass_arguments, dataclass_from_args
from sae_flux.interp.config import (
    DissectConfig,
    IndexConfig,
    ScoreConfig,
    SelectConfig,
    SweepConfig,
)

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("interp", help="visual auto-interpretation of dictionaries and neurons")
    commands = parser.add_subparsers(dest="interp_command", required=True)

    index = commands.add_parser("index", help="build (or --resume) a max-activation index from a cache")
    index.add_argument("cache", help="activation cache directory (sae-flux cache)")
    which = index.add_mutually_exclusive_group(required=True)
    which.add_argument("--dictionary", help="dictionary directory sae_lens loads (SAE, ITDA, ...) or a Hub reference REPO_ID:FOLDER")
    which.add_argument("--neurons", action="store_true", help="index the cached hook's values as neurons")
    index.add_argument("--hook", help="cache hook to read (default: the cache's only hook)")
    index.add_argument("--step", type=int, help="denoising step, when the cache holds several")
    index.add_argument("--name", help="label in reports (default: the directory name or 'neurons')")
    index.add_argument("--resume", action="store_true", help="continue an interrupted index")
    add_dataclass_arguments(index, IndexConfig)
    index.set_defaults(func=run_index)

    for name, helptext in (("images", "generate the images explain and detect show (selected images and distractors)"),
                           ("render", "write feature cards (PNG) and a paged browser of every chosen feature"),
                           ("explain", "explain features from their top images with heatmaps (VLM or oracle)"),
                           ("detect", "score explanations: detection, prevalence-corrected detection, fuzzing, "
                                      "with a shuffled-explanation floor and the oracle's ceiling"),
                           ("ground-truth", "dissection IoU + concept detection on the organism, with a browser")):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("index", nargs="+" if name == "ground-truth" else None, help="index directory")
        sub.add_argument("--prompts", required=True, help="the prompt file the cache was made from")
        sub.add_argument("--model", default="organism", help="organism, tiny, repo id or pipeline dir")
        sub.add_argument("--seed", type=int, help="generation seed (default: the cache's)")
        sub.add_argument("--features", type=int, nargs="+", help="feature ids (default: the first N live)")
        sub.add_argument("--max-features", type=int, default=None if name == "render" else 16,
                         help="features when --features is not given (render: every live feature)")
        sub.add_argument("--out", default="interp-out", help="output directory (cards, browser)")
        add_dataclass_arguments(sub, SelectConfig)
        sub.set_defaults(func=_RUNNERS[name])
    for name in ("explain", "detect"):
        _backend_arguments(commands.choices[name])
    commands.choices["explain"].add_argument("--results", default="explanations.jsonl",
                                             help="JSONL of explained features (a rerun continues it)")
    detect = commands.choices["detect"]
    detect.add_argument("--explanations", required=True, help="JSONL written by `interp explain`")
    detect.add_argument("--results", default="scores.jsonl", help="JSONL of scored features (a rerun continues it)")
    detect.add_argument("--summary", default="scores-summary.json", help="means with 95%% intervals per rater and role")
    detect.add_argument("--no-ground-truth", action="store_true",
                        help="do not use the organism's ground truth (no corrected score, no ceiling, no oracle rating)")
    commands.choices["render"].add_argument("--scores", help="scores JSONL of `interp detect` shown on the cards")
    commands.choices["render"].add_argument("--per-page", type=int, default=48, help="cards per browser page")
    add_dataclass_arguments(commands.choices["ground-truth"], DissectConfig)
    _register_calibrate(commands)
    sweep = commands.add_parser("sweep", help="train SAEs and ITDAs at several sizes, L0s and seeds and compare them "
                                "with MLP neurons at matched live units, L0 and held-out FVU (calibrated scores, floors, ceiling)")
    add_dataclass_arguments(sweep, SweepConfig)
    sweep.set_defaults(func=run_sweep)


def _register_calibrate(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser("calibrate", help="calibrated dissection on held-out organism images, with a "
                              "random-direction floor and a linear-probe ceiling")
    sub.add_argument("--dictionary", action="append", default=[], metavar="NAME=PATH",
                     help="a dictionary to score (repeatable; PATH is a folder sae_lens loads or REPO_ID:FOLDER)")
    sub.add_argument("--neurons", action="append", default=[], metavar="HOOK",
                     help="score the neurons of an MLP hook (double.{i}.mlp; repeatable)")
    sub.add_argument("--model", default="organism", help="the organism (its ground truth is what is scored)")
    sub.add_argument("--images", type=int, default=256, help="held-out scoring images")
    sub.add_argument("--select-images", type=int, default=256, help="images the units are chosen and probes trained on")
    sub.add_argument("--seed", type=int, default=10_000, help="world and noise seed of the scoring images")
    sub.add_argument("--select-seed", type=int, default=20_000, help="world and noise seed of the selection images")
    sub.add_argument("--step", type=int, default=0, help="denoising step whose activations are scored")
    sub.add_argument("--out", default="calibration", help="output directory (calibration.json, calibration.md)")
    add_dataclass_arguments(sub, ScoreConfig)
    sub.set_defaults(func=run_calibrate)


def _backend_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--backend", choices=("openai", "hf", "oracle"), default="openai",
                     help="openai: an OpenAI-compatible server; hf: a local transformers VLM; oracle: the "
                          "organism's ground truth (the ceiling)")
    sub.add_argument("--base-url", help="OpenAI-compatible API root (or SAE_FLUX_VLM_BASE_URL)")
    sub.add_argument("--vlm-model", help="model name (or SAE_FLUX_VLM_MODEL); for --backend hf a local path")
    sub.add_argument("--cache-dir", default=".sae-flux-vlm-cache", help="answers cache (reruns cost nothing)")
    sub.add_argument("--max-retries", type=int, default=4, help="retries of a failed request")
    sub.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry (doubling)")
    sub.add_argument("--max-backoff", type=float, default=60.0,
                     help="cap on any wait between retries, a server's Retry-After included")
    sub.add_argument("--timeout", type=float, default=120.0,
                     help="overall deadline of one request in seconds (every byte of the answer)")
    sub.add_argument("--api-key-env", default="OPENAI_API_KEY",
                     help="environment variable holding the API key (sent only over https or to loopback)")
    sub.add_argument("--allow-insecure-key", action="store_true",
                     help="send the API key over plain http to a host that is not loopback")


def run_index(args: argparse.Namespace) -> int:
    from sae_flux.cache import CacheReader
    from sae_flux.interp.index import build_index, cache_images, dictionary_source, neuron_source

    reader = CacheReader(args.cache, args.hook)
    if args.neurons:
        source = neuron_source(reader.hook, reader.d_model, name=args.name or "neurons")
    else:
        source = dictionary_source(args.dictionary, args.name)
    extra = {"cache": args.cache, "cache_settings": reader.manifest.settings}  # the path as given
    images = _finite(cache_images(args.cache, reader.hook, args.step), args.cache)
    index = build_index(dataclass_from_args(IndexConfig, args), source, images,
                        resume=args.resume, hook=reader.hook, extra=extra)
    logger.info("index %s: %d images, %d features (%d live)", index.path, index.num_images, index.width,
                int((index.top["max_F"] > 0).sum()))
    return 0


def _finite(batches: Iterator[Any], cache: str) -> Iterator[Any]:
    """The cache's image batches, refusing one whose activations hold NaN or inf (they would
    enter the index as top activations)."""
    import torch

    for batch in batches:
        bad = ~torch.isfinite(batch.acts_ITD)
        if bad.any():
            images = batch.image_I[bad.flatten(1).any(1)].tolist()
            raise ValueError(f"activation cache {cache} holds {int(bad.sum())} non-finite (NaN or inf) "
                             f"values in images {images[:5]}: refusing to index them")
        yield batch


def _context(args: argparse.Namespace, path: str) -> tuple[Any, list[str], int]:
    """(index reader, prompts, seed), with the prompts checked against the cache's hash."""
    from sae_flux.cache import prompt_hash, read_prompts
    from sae_flux.interp.index import IndexReader

    index = IndexReader(path)
    prompts = read_prompts(args.prompts)
    settings = index.state.get("extra", {}).get("cache_settings", {})
    if settings.get("prompt_hash") not in (None, prompt_hash(prompts)):
        raise ValueError(f"{args.prompts} is not the prompt file of the cache behind {path} (hash differs)")
    seed = args.seed if args.seed is not None else int(settings.get("seed", 0))
    return index, prompts, seed


def _features(args: argparse.Namespace, index: Any) -> list[int]:
    """``--features`` (a dead one is refused, with its reason), else the first ``--max-features`` live."""
    if args.features:
        features = [index.check_feature(f) for f in args.features]
        dead = [f for f in features if not len(index.top_images(f)[1])]
        if dead:
            raise ValueError(f"features {dead} of {index.name!r} never fired on the {index.num_images} indexed images "
                             "(dead): there is nothing to show or explain")
        return features
    live = [f for f in range(index.width) if len(index.top_images(f)[1])]
    return live[: args.max_features] if args.max_features is not None else live


def _unselected(args: argparse.Namespace, index: Any, features: list[int], chosen: list[int]) -> None:
    """Name the requested features the selection rule keeps no image of (never skipped silently)."""
    missing = sorted(set(features) - set(chosen))
    if missing:
        logger.warning("features %s of %r have no image with >= %d tokens over %.2g x their maximum (the selection "
                       "rule): they are not shown; lower --min-tokens or --threshold to see them", missing, index.name,
                       args.min_tokens, args.threshold)


def _selections(args: argparse.Namespace, index: Any, prompts: list[str], seed: int) -> list[Any]:
    """The selected images of the chosen features (generated when missing): what a card shows."""
    from sae_flux.interp.select import select

    cfg = dataclass_from_args(SelectConfig, args)
    features = _features(args, index)
    chosen = [s for s in (select(index, f, cfg) for f in features) if s.images]
    _unselected(args, index, features, [s.feature for s in chosen])
    _generate(args, index, prompts, seed, sorted({i for s in chosen for i in s.images}))
    return chosen


def _generate(args: argparse.Namespace, index: Any, prompts: list[str], seed: int, images: list[int]) -> None:
    """Generate the listed images that the index does not hold yet (loads the model only then)."""
    from sae_flux.cache import load_flux
    from sae_flux.interp.index import write_images

    missing = [i for i in images if not index.image_path(i).is_file()]
    if missing:
        write_images(index, load_flux(args.model), prompts, missing, seed=seed, batch_size=64)


def run_images(args: argparse.Namespace) -> int:
    """Generate every image ``explain`` shows: each feature's selected images and its distractors."""
    from sae_flux.interp.explain import missing_images, plan

    index, prompts, seed = _context(args, args.index)
    plans = plan(index, _features(args, index), dataclass_from_args(SelectConfig, args))
    _generate(args, index, prompts, seed, missing_images(index, plans))
    logger.info("images of %d features (with their distractors) are in %s", len(plans), index.images_dir)
    return 0


def run_render(args: argparse.Namespace) -> int:
    from sae_flux.interp.browser import write_browser
    from sae_flux.interp.score import FeatureScores, near_floor
    from sae_flux.interp.select import render_card

    index, prompts, seed = _context(args, args.index)
    out = Path(args.out)
    (out / "cards").mkdir(parents=True, exist_ok=True)
    records = _read_scores(args.scores, index.name, FeatureScores) if args.scores else []
    truth_scores = [r for r in records if r.rater == "oracle"]
    flags = near_floor(truth_scores)
    by_feature: dict[int, list[Any]] = {}
    for record in sorted(records, key=lambda r: r.rater == "oracle"):  # the VLM's record first
        by_feature.setdefault(record.feature, []).append(record)
    density = index.density()
    cards = []
    for selection in _selections(args, index, prompts, seed):
        f = selection.feature
        file = out / "cards" / f"{index.name}-{f}.png"
        render_card(index, selection, title=f"{index.name} #{f}").save(file)
        cards.append(_card(index.name, f, str(file.relative_to(out)), float(density[f]), by_feature.get(f, []),
                           flags.get(f)))
    shown = {card.feature for card in cards}
    for f in (f for f in _features(args, index) if f not in shown):  # live, but no image passes the rule
        card = _card(index.name, f, "", float(density[f]), by_feature.get(f, []), flags.get(f))
        card.details.append(f"no image has >= {args.min_tokens} tokens over {args.threshold:g} x the maximum "
                            "(the selection rule), so no top image is shown")
        cards.append(card)
    page = write_browser(out, cards, title=f"Feature browser: {index.name}", per_page=args.per_page,
                         intro=f"{len(cards)} features of {index.name} ({index.num_images} indexed images). Top images "
                         "by the paper's rule; heatmap opacity grows with the square root of the activation (colour "
                         "bar: activation). Scores are 0-1, 0.5 = chance; a flag marks an explanation whose "
                         "ground-truth score is within the shuffled-explanation floor.")
    logger.info("%d cards and the browser %s", len(cards), page)
    return 0


def _card(dictionary: str, feature: int, image: str, density: float, records: list[Any], flag: str | None) -> Any:
    """A browser card: the explanation under test, then each rater's scores beside their floor."""
    from sae_flux.interp.browser import Card

    values = {"density (share of tokens)": density}
    for record in records:
        for metric in ("detection", "corrected", "fuzzing"):
            value = record.scored.value(metric)
            floor = record.floor.value(metric) if record.floor is not None else None
            if value is not None:
                values[f"{metric}, {record.rater}"] = value
            if floor is not None:
                values[f"{metric} floor, {record.rater}"] = floor
    explanation = records[0].scored.explanation if records else ""
    return Card(dictionary, feature, image, explanation, values, flag=flag or "")


def _read_scores(path: str, dictionary: str, kind: Any) -> list[Any]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [kind.from_record(raw) for raw in rows if raw["dictionary"] == dictionary]


def _interpreter(args: argparse.Namespace, truth: Any) -> Any:
    """The explainer / rater ``--backend`` names."""
    from sae_flux.interp.chat import ChatConfig, OpenAIChat
    from sae_flux.interp.explain import VLMInterpreter
    from sae_flux.interp.hf import HFChat
    from sae_flux.interp.oracle import OracleInterpreter

    if args.backend == "oracle":
        if truth is None:
            raise ValueError("--backend oracle needs the organism's ground truth: prompts from "
                             "sae_flux.organism.world.prompts(n, seed) with the cache's seed")
        return OracleInterpreter(truth, threshold=args.threshold)
    if args.backend == "openai":
        cfg = ChatConfig(base_url=args.base_url, model=args.vlm_model, cache_dir=args.cache_dir,
                         max_retries=args.max_retries, backoff=args.backoff, max_backoff=args.max_backoff,
                         timeout=args.timeout, api_key_env=args.api_key_env,
                         allow_insecure_key=args.allow_insecure_key)
        return VLMInterpreter(OpenAIChat(cfg), name=f"openai:{cfg.model}")
    if not args.vlm_model:
        raise ValueError("--backend hf needs --vlm-model PATH (a local transformers VLM checkpoint)")
    return VLMInterpreter(HFChat.from_pretrained(args.vlm_model, cache_dir=args.cache_dir),
                          name=f"hf:{Path(args.vlm_model).name}")


def run_explain(args: argparse.Namespace) -> int:
    from sae_flux.interp.explain import interpret
    from sae_flux.interp.oracle import Truth

    index, prompts, seed = _context(args, args.index)
    features = _features(args, index)
    truth = Truth.of_prompts(prompts, seed) if args.backend == "oracle" else None
    interpreter = _interpreter(args, truth)
    results = interpret(index, interpreter, features, out=args.results, select_cfg=dataclass_from_args(SelectConfig, args),
                        n_distractors=0, make_images=lambda ids: _generate(args, index, prompts, seed, ids))
    _unselected(args, index, features, [r.feature for r in results])
    for r in results:
        logger.info("feature %d: %s", r.feature, r.explanation.pattern)
    logger.info("%d explanations in %s", len(results), args.results)
    return 0


def run_detect(args: argparse.Namespace) -> int:
    """Detection, corrected detection and fuzzing of explanations; the oracle re-rates them when it can."""
    from sae_flux.interp.explain import missing_images, plan
    from sae_flux.interp.oracle import OracleInterpreter, Truth
    from sae_flux.interp.score import score_features, summary

    index, prompts, seed = _context(args, args.index)
    explanations = _explanations(args.explanations, index.name)
    features = _features(args, index) if args.features else sorted(explanations)
    unexplained = [f for f in features if f not in explanations]
    if unexplained:
        raise ValueError(f"features {unexplained} have no explanation in {args.explanations}; explain them first")
    truth = None if args.no_ground_truth else Truth.of_prompts(prompts, seed)
    rater = _interpreter(args, truth)
    plans = plan(index, features, dataclass_from_args(SelectConfig, args))
    if rater.uses_images:
        _generate(args, index, prompts, seed, missing_images(index, plans))
    raters = [rater] + ([OracleInterpreter(truth, args.threshold)] if truth is not None and args.backend != "oracle" else [])
    results = []
    for each in raters:
        results += score_features(index, each, explanations, plans, truth=truth, threshold=args.threshold,
                                  out=args.results)
    rows = summary(results)
    Path(args.summary).write_text(json.dumps(rows, indent=2))
    for row in rows:
        logger.info("%s", _describe(row))
    if truth is None:
        logger.warning("no ground truth (not the organism's prompts, or --no-ground-truth): no corrected score, "
                       "no oracle ceiling")
    return 0


def _explanations(path: str, dictionary: str) -> dict[int, str]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    found = {int(r["feature"]): str(r["explanation"]["pattern"]) for r in rows if r["dictionary"] == dictionary}
    if not found:
        raise ValueError(f"{path} holds no explanation of {dictionary!r}; run `sae-flux interp explain` first")
    return found


def _describe(row: dict[str, Any]) -> str:
    parts = []
    for metric in ("detection", "corrected", "fuzzing"):
        if row[metric] is None:
            parts.append(f"{metric} n/a")
        else:
            parts.append(f"{metric} {row[metric]:.3f} [{row[metric + '_low']:.3f}, {row[metric + '_high']:.3f}] "
                         f"(n={row[metric + '_features']})")
    return f"{row['rater']} / {row['explanations']}: " + "; ".join(parts)


def run_ground_truth(args: argparse.Namespace) -> int:
    from sae_flux.cache import load_flux
    from sae_flux.interp.dissect import world_labels
    from sae_flux.interp.stage import CompareConfig, compare
    from sae_flux.report import table_html

    contexts = [_context(args, path) for path in args.index]
    indexes = {index.name: index for index, _, _ in contexts}
    _, prompts, seed = contexts[0]
    cfg = CompareConfig(dataclass_from_args(DissectConfig, args), dataclass_from_args(SelectConfig, args),
                        cards=args.max_features, seed=seed)
    result = compare(indexes, world_labels(prompts, seed=seed), args.out, load_flux(args.model), prompts, cfg)
    out = Path(args.out)
    (out / "scores.json").write_text(json.dumps(result.rows, indent=2))
    (out / "scores.html").write_text(table_html(result.rows) + '<p><img src="scores.png"></p>', encoding="utf-8")
    for row in result.rows:
        logger.info("%s", json.dumps(row))
    logger.info("browser: %s", result.browser.resolve())
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    """Score every --dictionary and --neurons set beside its floor and ceiling; write the tables."""
    from sae_flux.cache import load_flux
    from sae_flux.interp.calibrate import calibrate, capture_set, markdown
    from sae_flux.interp.index import dictionary_source, neuron_source

    units = []
    for spec in args.dictionary:
        name, sep, path = spec.partition("=")
        if not sep:
            raise ValueError(f"--dictionary {spec!r} is not NAME=PATH")
        units.append(dictionary_source(path, name))
    flux = load_flux(args.model)
    units += [neuron_source(hook, flux.width(hook), name=f"neurons-{hook}") for hook in args.neurons]
    if not units:
        raise ValueError("nothing to score: give --dictionary NAME=PATH and/or --neurons HOOK")
    missing = [u.name for u in units if not u.hook]
    if missing:
        raise ValueError(f"dictionaries {missing} do not record their hook (cfg.json metadata.hook_name)")
    hooks = list(dict.fromkeys(u.hook for u in units))
    held = capture_set(flux, hooks, args.images, seed=args.seed, step=args.step)
    select = capture_set(flux, hooks, args.select_images, seed=args.select_seed, step=args.step)
    cfg = dataclass_from_args(ScoreConfig, args)
    result = calibrate(units, held, select, cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": vars(args) | {"func": None}, "score_config": cfg.__dict__, "rows": result.rows,
              "concepts": result.concepts}
    (out / "calibration.json").write_text(json.dumps(record, indent=1, default=str))
    (out / "calibration.md").write_text(markdown(result.rows) + "\n" + markdown(result.concepts), encoding="utf-8")
    logger.info("tables in %s", (out / "calibration.md").resolve())
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """Run the fair-comparison sweep of ``SweepConfig`` and write sweep.json and sweep.md."""
    import shlex
    import sys

    from sae_flux.interp.sweep import run_sweep as sweep

    cfg = dataclass_from_args(SweepConfig, args)
    result = sweep(cfg, command=shlex.join(["sae-flux", *sys.argv[1:]]))
    logger.info("tables in %s", result.markdown_path.resolve())
    return 0


_RUNNERS = {"images": run_images, "render": run_render, "explain": run_explain, "detect": run_detect,
            "ground-truth": run_ground_truth, "calibrate": run_calibrate}
