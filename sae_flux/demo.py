"""The main job: the whole Flux-side pipeline on the embedded organism, written as a report.

Stages (each writes into ``out/`` and adds a section to ``out/index.html``):

1. prompts drawn from the organism's scene world (:mod:`sae_flux.organism.world`);
2. an activation cache of the image stream of a middle double block (:mod:`sae_flux.cache`);
3. an ITDA dictionary built from the cache (:mod:`itda`, Leask et al. 2025);
4. a TopK SAE trained on the cache with sae_lens's ``SAETrainer`` (:mod:`sae_flux.train`);
5. reconstruction metrics of both (:mod:`sae_flux.metrics`);
6. visual interpretation of SAE latents, ITDA atoms and MLP neurons: top images with
   heatmaps, ground-truth (network dissection) scores and a feature browser
   (:mod:`sae_flux.interp`, the pipeline of Shabalin et al. 2025);
7. steering generation with dictionary features vs a difference-of-means direction, judged
   from pixels (:mod:`sae_flux.steer`).

Example:
    $ sae-flux demo --out demo-out            # about a minute on 2 CPU cores
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sae_flux.cache import CacheConfig, CacheReader, load_flux, write_cache
from sae_flux.demo_config import DemoConfig
from sae_flux.report import Report

logger = logging.getLogger(__name__)


@dataclass
class DemoState:
    """What the stages hand each other."""

    cfg: DemoConfig
    out: Path
    report: Report
    flux: Any = None
    hook: str = ""
    prompts: list[str] | None = None
    cache: Path | None = None
    dictionaries: dict[str, Path] | None = None


def _prepare_out(cfg: DemoConfig) -> Path:
    out = Path(cfg.out)
    if out.exists():
        if not cfg.overwrite:
            raise FileExistsError(f"demo output directory {out} exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def stage_prompts(state: DemoState) -> None:
    from sae_flux.organism.world import prompts

    cfg = state.cfg
    state.prompts = prompts(cfg.n_prompts, seed=cfg.seed)
    heldout = prompts(max(64, cfg.n_prompts // 8), seed=cfg.seed + 1, split="heldout")
    (state.out / "prompts.txt").write_text("\n".join(state.prompts) + "\n", encoding="utf-8")
    (state.out / "prompts-heldout.txt").write_text("\n".join(heldout) + "\n", encoding="utf-8")
    state.report.section(
        "Prompts",
        text=f"{len(state.prompts)} training captions and {len(heldout)} held-out captions (unseen "
        f"templates) from the scene world, e.g. {state.prompts[0]!r}, {heldout[0]!r}.",
    )


def _cache(state: DemoState, prompts: str, out: str) -> Any:
    cfg = CacheConfig(
        model=state.cfg.model, prompts=str(state.out / prompts), hooks=[state.hook], out=str(state.out / out),
        steps=[state.cfg.step], seed=state.cfg.seed, batch_size=32, shard_prompts=128,
    )
    return write_cache(cfg, flux=state.flux)


def stage_cache(state: DemoState) -> None:
    n_double, _ = state.flux.block_counts
    state.hook = state.cfg.hook or f"double.{n_double // 2}.img"
    state.cache = state.out / "cache"
    manifest = _cache(state, "prompts.txt", "cache")
    heldout = _cache(state, "prompts-heldout.txt", "cache-heldout")
    tokens = manifest.tokens(state.hook)
    state.report.numbers["cache"] = {"hook": state.hook, "tokens": tokens, "heldout_tokens": heldout.tokens(state.hook),
                                     "d_model": manifest.widths[state.hook]}
    state.report.section(
        "Activation cache",
        text=f"{tokens} image tokens of {state.hook} (step {state.cfg.step} of "
        f"{state.flux.defaults.num_inference_steps}), width {manifest.widths[state.hook]}, in "
        f"{len(manifest.shards)} shards; {heldout.tokens(state.hook)} held-out tokens for evaluation.",
    )


def stage_itda(state: DemoState) -> None:
    import itda

    config = itda.BuildConfig(target_l0=state.cfg.itda_l0, loss_threshold=state.cfg.itda_threshold,
                              seed=state.cfg.seed, max_atoms=8192)
    assert state.cache is not None, "stage_cache runs before stage_itda"
    dictionary = itda.build_from_cache(state.cache, config, batch_size=256)
    path = state.out / "dictionaries" / "itda"
    dictionary.save_model(path)
    state.dictionaries = {**(state.dictionaries or {}), "itda": path}


def stage_sae(state: DemoState) -> None:
    from sae_flux.train import DataConfig, DictionaryConfig, OptimConfig, TrainConfig, train_sae

    cfg = TrainConfig(
        out=str(state.out / "dictionaries" / "sae-topk"),
        data=DataConfig(cache=str(state.cache), buffer_tokens=65_536),
        sae=DictionaryConfig(architecture="topk", k=state.cfg.sae_k, expansion_factor=state.cfg.sae_expansion,
                             normalize="whiten", normalize_tokens=16_384),
        optim=OptimConfig(total_tokens=state.cfg.sae_tokens, batch_size=1024, lr=1e-3, seed=state.cfg.seed),
        eval_tokens=16_384,
        log_every=50,
    )
    result = train_sae(cfg)
    state.dictionaries = {**(state.dictionaries or {}), "sae-topk": result.path}


def stage_metrics(state: DemoState) -> None:
    from sae_flux.dictionary import load_dictionary
    from sae_flux.metrics import evaluate

    rows = []
    reader = CacheReader(state.out / "cache-heldout")
    for name, path in (state.dictionaries or {}).items():
        dictionary = load_dictionary(path)
        metrics = evaluate(dictionary, reader.batches(4096, seed=1), max_tokens=reader.num_tokens)
        row = {"dictionary": name, "architecture": dictionary.cfg.architecture(), "latents": dictionary.cfg.d_sae,
               **{k: v for k, v in metrics.record().items() if k in ("fvu", "explained_variance", "l0", "dead_fraction", "tokens")}}
        rows.append(row)
    state.report.numbers["reconstruction"] = rows
    state.report.section(
        "Reconstruction",
        text="Measured on held-out raw activations (prompts with unseen caption templates); dead = never "
        "active in that window.",
        table=rows,
    )


def stage_interp(state: DemoState) -> None:
    from sae_flux.interp.stage import stage_interp as interpret

    interpret(state)


def stage_steering(state: DemoState) -> None:
    from sae_flux.steering.stage import stage_steering as steer

    steer(state)


STAGES = (
    ("prompts", stage_prompts),
    ("cache", stage_cache),
    ("itda", stage_itda),
    ("sae", stage_sae),
    ("metrics", stage_metrics),
    ("interp", stage_interp),
    ("steering", stage_steering),
)


def run_demo(cfg: DemoConfig) -> Path:
    """Run every stage and return the path of ``index.html``."""
    out = _prepare_out(cfg)
    report = Report(out, title="sae-flux demo: dictionaries on the Flux organism")
    state = DemoState(cfg, out, report, flux=load_flux(cfg.model))
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    timings = {}
    for name, stage in tqdm(STAGES, desc="demo", unit="stage"):
        start = time.perf_counter()
        stage(state)
        timings[name] = round(time.perf_counter() - start, 2)
        report.write()  # a partial report survives a later failure
    report.numbers["stage_seconds"] = timings
    report.section("Timings", table=[{"stage": k, "seconds": v} for k, v in timings.items()])
    return report.write()
