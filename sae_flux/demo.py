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

One flag sizes it all: ``--n-prompts`` sets the cache (one denoising step per prompt), the
held-out images, the SAE's size (one latent per :data:`TOKENS_PER_LATENT` cache tokens, 2x to
8x), its training tokens (:data:`SAE_EPOCHS` passes over the cache, never more:
``OptimConfig.max_epochs``) and the images drawn for steering and feature cards (2 to 4 each);
the ITDA reads the cache once. The report's "Sizes" section states every number.

Example:
    $ sae-flux demo --out demo-out                   # the default, 1,024 prompts
    $ sae-flux demo --out quick --n-prompts 128      # the quick setting: 8,192 cache tokens
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from sae_flux import hooks
from sae_flux.cache import CacheConfig, CacheReader, load_flux, write_cache
from sae_flux.demo_config import DemoConfig
from sae_flux.interp.stage import stage_interp
from sae_flux.report import Report
from sae_flux.steering.stage import stage_steering
from sae_flux.threads import torch_threads
from sae_flux.train_config import MAX_EPOCHS

logger = logging.getLogger(__name__)

#: Passes the demo's SAE makes over its cache (``OptimConfig.max_epochs`` caps any run at this).
SAE_EPOCHS = MAX_EPOCHS
#: Cache tokens per SAE latent when the SAE is sized from the data (8x at the default 1,024 prompts).
TOKENS_PER_LATENT = 64
#: Range of the data-sized SAE expansion.
SAE_EXPANSION_RANGE = (2, 8)
#: Largest SAE batch; smaller caches get batches of an eighth of the cache (8 steps per pass).
SAE_BATCH = 1024
#: Ceiling of the tokens the whitening, the decoder-bias init and the in-sample metrics read.
SAE_WINDOW_TOKENS = 16_384
#: Range of the image samples shown: steering targets per concept and feature cards per
#: dictionary (one per 128 prompts, so the quick setting draws fewer images).
SAMPLE_RANGE = (2, 4)


class DemoSizes(NamedTuple):
    """Every budget of the demo, derived from ``--n-prompts`` and the model's token grid."""

    prompts: int
    heldout_prompts: int
    """Held-out images whose cache measures reconstruction (at least 64)."""
    cache_tokens: int
    """Image tokens cached (one step per prompt); the ITDA reads each once."""
    sae_latents: int
    sae_batch: int
    sae_tokens: int
    """SAE training tokens: ``SAE_EPOCHS`` passes over the cache unless --sae-tokens says otherwise."""
    sae_window_tokens: int
    """Tokens of the whitening estimate and of the in-sample metrics."""
    samples: int
    """Steering targets per concept and feature cards per dictionary (images drawn for the report)."""

    @classmethod
    def of(cls, cfg: DemoConfig, tokens_per_image: int, d_model: int) -> DemoSizes:
        cache_tokens = cfg.n_prompts * tokens_per_image
        low, high = SAE_EXPANSION_RANGE
        expansion = cfg.sae_expansion or min(high, max(low, cache_tokens // (TOKENS_PER_LATENT * d_model)))
        batch = min(SAE_BATCH, cache_tokens // 8)
        return cls(
            prompts=cfg.n_prompts,
            heldout_prompts=max(64, cfg.n_prompts // 8),
            cache_tokens=cache_tokens,
            sae_latents=expansion * d_model,
            sae_batch=batch,
            sae_tokens=cfg.sae_tokens or SAE_EPOCHS * cache_tokens,
            sae_window_tokens=min(SAE_WINDOW_TOKENS, cache_tokens),
            samples=min(SAMPLE_RANGE[1], max(SAMPLE_RANGE[0], cfg.n_prompts // 128)),
        )

    def describe(self) -> str:
        return (
            f"{self.prompts} prompts -> {self.cache_tokens:,} cache tokens (the ITDA reads each once); SAE of "
            f"{self.sae_latents:,} latents trained on {self.sae_tokens:,} tokens ({self.sae_tokens / self.cache_tokens:.1f} "
            f"passes, batches of {self.sae_batch}, at most {MAX_EPOCHS} passes); {self.heldout_prompts} held-out "
            f"images for reconstruction; {self.samples} steering targets per concept and {self.samples} feature "
            f"cards per dictionary."
        )


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
    sizes: DemoSizes | None = None


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
    assert state.sizes is not None, "run_demo sizes the demo first"
    state.prompts = prompts(cfg.n_prompts, seed=cfg.seed)
    heldout = prompts(state.sizes.heldout_prompts, seed=cfg.seed + 1, split="heldout")
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
    from sae_flux.itda_build import build_from_cache

    config = itda.BuildConfig(target_l0=state.cfg.itda_l0, loss_threshold=state.cfg.itda_threshold,
                              encoder="gp", nonnegative=True, seed=state.cfg.seed, max_atoms=8192)
    assert state.cache is not None, "stage_cache runs before stage_itda"
    dictionary = build_from_cache(state.cache, config, batch_size=state.cfg.itda_batch)
    path = state.out / "dictionaries" / "itda"
    dictionary.save_model(path)
    state.dictionaries = {**(state.dictionaries or {}), "itda": path}


def stage_sae(state: DemoState) -> None:
    from sae_flux.train import DataConfig, DictionaryConfig, OptimConfig, TrainConfig, train_sae

    sizes = state.sizes
    assert sizes is not None and state.cache is not None, "the demo is sized and cached first"
    cfg = TrainConfig(
        out=str(state.out / "dictionaries" / "sae-topk"),
        data=DataConfig(cache=str(state.cache), buffer_tokens=min(65_536, sizes.cache_tokens)),
        sae=DictionaryConfig(architecture="topk", k=state.cfg.sae_k, d_sae=sizes.sae_latents,
                             normalize="whiten", normalize_tokens=sizes.sae_window_tokens),
        optim=OptimConfig(total_tokens=sizes.sae_tokens, batch_size=sizes.sae_batch, lr=1e-3, seed=state.cfg.seed),
        eval_tokens=sizes.sae_window_tokens,
        log_every=50,
    )  # the dead-latent window is scaled to the run (TrainConfig.dead_window)
    result = train_sae(cfg)
    state.dictionaries = {**(state.dictionaries or {}), "sae-topk": result.path}


def stage_metrics(state: DemoState) -> None:
    from sae_flux.dictionary import load_dictionary
    from sae_flux.metrics import evaluate

    rows = []
    reader = CacheReader(state.out / "cache-heldout")
    for name, path in (state.dictionaries or {}).items():
        dictionary = load_dictionary(path)
        metrics = evaluate(dictionary, (acts for acts, _ in reader.iter_shards()), max_tokens=reader.num_tokens)
        row = {"dictionary": name, "architecture": dictionary.cfg.architecture(), "latents": dictionary.cfg.d_sae,
               **{k: v for k, v in metrics.record().items() if k in ("fvu", "explained_variance", "l0", "dead_fraction", "tokens")}}
        rows.append(row)
    state.report.numbers["reconstruction"] = rows
    best = min(rows, key=lambda r: r["fvu"]) if rows else None
    others = ", ".join(f"{r['dictionary']} {r['fvu']:.2f}" for r in rows if r is not best)
    state.report.section(
        "Reconstruction",
        text="Measured on held-out raw activations (prompts with unseen caption templates); dead = never "
        "active in that window.",
        table=rows,
        conclusion=(f"{best['dictionary']} reconstructs held-out activations best (FVU {best['fvu']:.2f} at L0 "
                    f"{best['l0']:.1f}{'; ' + others if others else ''})" if best else ""),
    )


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
    flux = load_flux(cfg.model)
    hook = cfg.hook or f"double.{flux.block_counts[0] // 2}.img"
    rows, cols = flux.grid()
    per_image = rows * cols if hooks.parse(hook).is_image else flux.defaults.max_sequence_length
    sizes = DemoSizes.of(cfg, per_image, flux.width(hook))
    state = DemoState(cfg, out, report, flux=flux, hook=hook, sizes=sizes)
    (out / "demo_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    report.numbers["sizes"] = sizes._asdict()
    report.section("Sizes", text=sizes.describe())
    logger.info("demo sizes: %s", sizes.describe())
    timings = {}
    with torch_threads(cfg.threads):
        for name, stage in tqdm(STAGES, desc="demo", unit="stage"):
            start = time.perf_counter()
            stage(state)
            timings[name] = round(time.perf_counter() - start, 2)
            report.write()  # a partial report survives a later failure
    report.numbers["stage_seconds"] = timings
    report.section("Timings", table=[{"stage": k, "seconds": v} for k, v in timings.items()])
    report.conclusion = overall_conclusion(report)
    return report.write()


def overall_conclusion(report: Report) -> str:
    """The sections' conclusions as one sentence, each prefixed by its section title."""
    parts = [f"{s.title.lower()}: {s.conclusion.rstrip('.')}" for s in report.sections if s.conclusion]
    return ("On this organism, " + "; ".join(parts) + ".") if parts else ""
