"""``sae-flux interp``: max-activation index, images, cards, VLM explanations, ground truth.

See :mod:`sae_flux.interp` and ``docs/interp.md``. Typical use::

    sae-flux interp index demo-out/cache --dictionary demo-out/dictionaries/sae-topk --out idx-sae
    sae-flux interp index mlp-cache --neurons --out idx-mlp
    sae-flux interp ground-truth idx-sae idx-mlp --prompts demo-out/prompts.txt --model organism --out gt
    sae-flux interp explain idx-sae --features 3 7 --prompts demo-out/prompts.txt --model organism \\
        --backend openai --base-url http://127.0.0.1:8000/v1 --vlm-model Qwen2.5-VL-7B --results r.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from sae_flux.cliargs import add_dataclass_arguments, dataclass_from_args
from sae_flux.interp.config import DissectConfig, IndexConfig, ScoreConfig, SelectConfig

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
    index.set_defaults(func=_guard(run_index))

    for name, helptext in (("images", "generate the images explain shows (selected images and distractors)"),
                           ("render", "write feature cards (PNG)"),
                           ("explain", "explain and detection-score features with a VLM"),
                           ("ground-truth", "dissection IoU + concept detection on the organism, with a browser")):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("index", nargs="+" if name == "ground-truth" else None, help="index directory")
        sub.add_argument("--prompts", required=True, help="the prompt file the cache was made from")
        sub.add_argument("--model", default="organism", help="organism, tiny, repo id or pipeline dir")
        sub.add_argument("--seed", type=int, help="generation seed (default: the cache's)")
        sub.add_argument("--features", type=int, nargs="+", help="feature ids (default: the first N live)")
        sub.add_argument("--max-features", type=int, default=16, help="features when --features is not given")
        sub.add_argument("--out", default="interp-out", help="output directory (cards, browser)")
        add_dataclass_arguments(sub, SelectConfig)
        sub.set_defaults(func=_RUNNERS[name])
    explain = commands.choices["explain"]
    explain.add_argument("--backend", choices=("openai", "hf"), default="openai")
    explain.add_argument("--base-url", help="OpenAI-compatible API root (or SAE_FLUX_VLM_BASE_URL)")
    explain.add_argument("--vlm-model", help="model name (or SAE_FLUX_VLM_MODEL); for --backend hf a local path")
    explain.add_argument("--cache-dir", default=".sae-flux-vlm-cache", help="answers cache (reruns cost nothing)")
    explain.add_argument("--results", default="explanations.jsonl", help="JSONL of finished features")
    explain.add_argument("--max-retries", type=int, default=4, help="retries of a failed request")
    explain.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry (doubling)")
    add_dataclass_arguments(commands.choices["ground-truth"], DissectConfig)
    _register_calibrate(commands)


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


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from sae_flux.interp.chat import BackendError

        try:
            return int(func(args) or 0)
        except (IndexError, BackendError) as err:
            logger.error("%s", err)
            return 2

    return run


def run_index(args: argparse.Namespace) -> int:
    from sae_flux.cache import CacheReader
    from sae_flux.interp.index import build_index, cache_images, dictionary_source, neuron_source

    reader = CacheReader(args.cache, args.hook)
    if args.neurons:
        source = neuron_source(reader.hook, reader.d_model, name=args.name or "neurons")
    else:
        source = dictionary_source(args.dictionary, args.name)
    extra = {"cache": str(Path(args.cache).resolve()), "cache_settings": reader.manifest.settings}
    index = build_index(dataclass_from_args(IndexConfig, args), source, cache_images(args.cache, reader.hook, args.step),
                        resume=args.resume, hook=reader.hook, extra=extra)
    logger.info("index %s: %d images, %d features (%d live)", index.path, index.num_images, index.width,
                int((index.top["max_F"] > 0).sum()))
    return 0


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
    if args.features:
        return [index.check_feature(f) for f in args.features]
    return [f for f in range(index.width) if len(index.top_images(f)[1])][: args.max_features]


def _selections(args: argparse.Namespace, index: Any, prompts: list[str], seed: int) -> list[Any]:
    """The selected images of the chosen features (generated when missing): what a card shows."""
    from sae_flux.interp.select import select

    cfg = dataclass_from_args(SelectConfig, args)
    chosen = [s for s in (select(index, f, cfg) for f in _features(args, index)) if s.images]
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
    from sae_flux.interp.select import render_card

    index, prompts, seed = _context(args, args.index)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for selection in _selections(args, index, prompts, seed):
        render_card(index, selection, title=f"{index.name} #{selection.feature}").save(
            out / f"{index.name}-{selection.feature}.png")
    logger.info("cards written to %s", out)
    return 0


def run_explain(args: argparse.Namespace) -> int:
    from sae_flux.interp.chat import ChatConfig, OpenAIChat
    from sae_flux.interp.explain import VLMInterpreter, interpret
    from sae_flux.interp.hf import HFChat

    index, prompts, seed = _context(args, args.index)
    features = _features(args, index)
    if args.backend == "openai":
        cfg = ChatConfig(base_url=args.base_url, model=args.vlm_model, cache_dir=args.cache_dir,
                         max_retries=args.max_retries, backoff=args.backoff)
        interpreter = VLMInterpreter(OpenAIChat(cfg), name=f"openai:{cfg.model}")
    else:
        if not args.vlm_model:
            raise ValueError("--backend hf needs --vlm-model PATH (a local transformers VLM checkpoint)")
        interpreter = VLMInterpreter(HFChat.from_pretrained(args.vlm_model, cache_dir=args.cache_dir),
                                     name=f"hf:{Path(args.vlm_model).name}")
    results = interpret(index, interpreter, features, out=args.results, select_cfg=dataclass_from_args(SelectConfig, args),
                        make_images=lambda ids: _generate(args, index, prompts, seed, ids))
    for r in results:
        score = r.detection.score if r.detection else float("nan")
        logger.info("feature %d: %s (detection %.3f)", r.feature, r.explanation.pattern, score)
    return 0


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


_RUNNERS = {"images": _guard(run_images), "render": _guard(run_render), "explain": _guard(run_explain),
            "ground-truth": _guard(run_ground_truth)}
