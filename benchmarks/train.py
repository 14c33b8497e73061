"""SAE training benchmark (issue 5): cache-reader throughput and the whitening contrast, one run.

Prints one JSON object:

- ``throughput_ratio``: tokens/s of ``sae_flux.train.train_sae`` reading the activation cache
  through ``CacheReader`` (shuffling buffer, checkpoint, final metrics included) over tokens/s of
  sae_lens's bare ``SAETrainer.fit()`` fed the same activations from a tensor in memory. Both
  arms train the same TopK SAE for the same steps on one thread; arms are interleaved over
  ``--rounds`` and the median time of each is used, so load from other processes hits both alike.
  Goal >= 0.9.
- ``dead_fraction`` / ``fvu`` per normalisation (none, standardize, whiten): the contrast of
  Shabalin et al. 2025 (arXiv 2505.24360; >99% dead without normalisation, <30% with PCA
  whitening on FLUX.1-schnell), here on the Flux organism's ``double.1.img`` (its last double
  block, as block 18 of 19 is in the paper). Dead = never fired over the stated window.

    python benchmarks/train.py [--model organism] [--prompts 512] [--steps 1500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.training.sae_trainer import SAETrainer

from sae_flux.cache import CacheConfig, CacheReader, load_flux, write_cache
from sae_flux.train import DataConfig, DictionaryConfig, OptimConfig, TrainConfig, train_sae

HOOK = "double.1.img"


def _prompts(model: str, n: int) -> list[str]:
    if model == "organism":
        from sae_flux.organism import prompts

        return prompts(n, split="train")
    colours, shapes, places = ("red", "green", "blue", "yellow"), ("circle", "square", "triangle"), ("left", "right", "top", "bottom")
    base = [f"a {c} {s} on the {p}" for c in colours for s in shapes for p in places]
    return [base[i % len(base)] for i in range(n)]


def make_cache(model: str, n_prompts: int, root: Path) -> Path:
    prompt_file = root / "prompts.txt"
    prompt_file.write_text("\n".join(_prompts(model, n_prompts)) + "\n")
    out = root / "cache"
    write_cache(CacheConfig(model=model, prompts=str(prompt_file), hooks=[HOOK], out=str(out),
                            batch_size=32, shard_prompts=64), flux=load_flux(model))
    return out


def _config(out: Path, cache: Path, steps: int, batch: int, normalize: str, eval_tokens: int,
            dead_window: int = 1000) -> TrainConfig:
    return TrainConfig(
        out=str(out),
        data=DataConfig(cache=str(cache), buffer_tokens=65_536),
        sae=DictionaryConfig(expansion_factor=16, k=16, normalize=normalize, normalize_tokens=16_384),
        optim=OptimConfig(total_tokens=steps * batch, batch_size=batch, lr=4e-4),
        log_every=50,
        eval_tokens=eval_tokens,
        dead_window=dead_window,
    )


def time_cache_arm(cache: Path, root: Path, steps: int, batch: int) -> float:
    out = root / f"arm-{time.monotonic_ns()}"
    start = time.perf_counter()
    train_sae(_config(out, cache, steps, batch, "none", eval_tokens=batch))
    return time.perf_counter() - start


def time_memory_arm(acts_ND: torch.Tensor, steps: int, batch: int) -> float:
    """sae_lens's own SAETrainer.fit() on an in-memory shuffled stream of the same activations."""
    sae_cls, cfg_cls = SAE_TRAINING_CLASS_REGISTRY["topk"]
    start = time.perf_counter()
    sae = sae_cls(cfg_cls(d_in=acts_ND.shape[1], d_sae=16 * acts_ND.shape[1], k=16))

    def stream() -> Any:
        gen = torch.Generator().manual_seed(0)
        while True:
            order = torch.randperm(acts_ND.shape[0], generator=gen)
            for i in range(0, len(order) - batch + 1, batch):
                yield acts_ND[order[i : i + batch]]

    cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr=4e-4,
                           lr_end=4e-5, adam_beta1=0.0, adam_beta2=0.99, logger=LoggingConfig(log_to_wandb=False))
    SAETrainer(cfg, sae, stream()).fit()
    return time.perf_counter() - start


def _spectrum(acts_ND: torch.Tensor) -> dict[str, float]:
    """Fraction of the variance in the top principal directions (the paper: a few dozen of 3072)."""
    centred = acts_ND[:65_536].double() - acts_ND[:65_536].double().mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred).flip(0)
    share = eigenvalues.cumsum(0) / eigenvalues.sum()
    return {f"top_{n}": round(share[n - 1].item(), 4) for n in (1, 4, 16, 32) if n <= len(share)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="organism", help="organism or tiny")
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1500, help="steps of the normalisation runs")
    parser.add_argument("--throughput-steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dead-window", type=int, default=1000,
                        help="steps without firing before TopK's AuxK loss treats a latent as dead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        cache = make_cache(args.model, args.prompts, root)
        reader = CacheReader(cache)
        acts_ND = torch.cat([a for a, _ in reader.iter_shards()])
        cache_times, memory_times = [], []
        for _ in range(args.rounds):
            cache_times.append(time_cache_arm(cache, root, args.throughput_steps, args.batch))
            memory_times.append(time_memory_arm(acts_ND, args.throughput_steps, args.batch))
        contrast = {}
        for normalize in ("none", "standardize", "whiten"):
            result = train_sae(_config(root / f"norm-{normalize}", cache, args.steps, args.batch, normalize,
                                       65_536, args.dead_window))
            contrast[normalize] = result.metrics
        window = contrast["none"].tokens
    print(json.dumps({
        "model": args.model,
        "hook": HOOK,
        "cache_tokens": int(acts_ND.shape[0]),
        "d_model": int(acts_ND.shape[1]),
        "sae": f"topk, 16x expansion, k=16, batch {args.batch}, lr 4e-4, Adam(0, 0.99)",
        "throughput_ratio": round(statistics.median(memory_times) / statistics.median(cache_times), 3),
        "throughput_tokens_per_s": {
            "cache_reader_train_sae": round(args.throughput_steps * args.batch / statistics.median(cache_times)),
            "memory_sae_trainer_fit": round(args.throughput_steps * args.batch / statistics.median(memory_times)),
        },
        "training_tokens": args.steps * args.batch,
        "dead_window_steps_for_auxk": args.dead_window,
        "variance_in_top_pcs": _spectrum(acts_ND),
        "dead_window_tokens": window,
        "dead_fraction": {k: round(m.dead_fraction, 4) for k, m in contrast.items()},
        "fvu": {k: round(m.fvu, 4) for k, m in contrast.items()},
        "l0": {k: round(m.l0, 2) for k, m in contrast.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
