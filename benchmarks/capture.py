"""Capture and caching overhead over bare pipeline calls, measured in one run (issue: foundation).

Prints one JSON object of ratios. The pipeline is a tiny-architecture FluxPipeline sized so that
the transformer dominates: 4 double + 4 single blocks (8 blocks), width 128, 64 px images =
256 image tokens, one denoising step, batches of 8 prompts. Timings are interleaved (bare,
one hook, all hooks, ...) and the median of each is used, so load from other processes hits all
arms alike.

    python benchmarks/capture.py [--rounds 15] [--rss-prompts 100 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sae_flux import Flux
from sae_flux.cache import CacheConfig, write_cache
from sae_flux.tiny import GenerationDefaults, TinyFluxConfig

CONFIG = TinyFluxConfig(
    num_layers=4,
    num_single_layers=4,
    num_attention_heads=4,
    attention_head_dim=32,
    axes_dims_rope=(8, 12, 12),
    text_dim=64,
    defaults=GenerationDefaults(resolution=64, max_sequence_length=32, num_inference_steps=1),
)
BATCH = 8
PROMPT = "a red circle on the left"


def _median_times(fns: dict[str, callable], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _rss_child(n_prompts: int) -> int:
    """Peak RSS (kB) of a fresh process caching ``n_prompts`` prompts."""
    code = f"""
import sys, tempfile
sys.path.insert(0, {str(Path(__file__).parent)!r})
from capture import CONFIG, PROMPT
from sae_flux import Flux
from sae_flux.cache import CacheConfig, write_cache
d = tempfile.mkdtemp()
open(d + '/p.txt', 'w').write('\\n'.join([PROMPT] * {n_prompts}))
flux = Flux.tiny(config=CONFIG)
write_cache(CacheConfig(model='x', prompts=d + '/p.txt', hooks=['double.2.img'], out=d + '/c',
            num_inference_steps=1, batch_size=8, shard_prompts=32), flux=flux)
print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rss-prompts", type=int, nargs=2, default=(100, 1000))
    args = parser.parse_args()
    torch.manual_seed(0)
    flux = Flux.tiny(config=CONFIG)
    prompts = [PROMPT] * BATCH
    kwargs = flux.generation_kwargs(num_inference_steps=1)
    every = [h for h in flux.hook_points() if not h.endswith(".mlp")]

    def bare() -> None:
        flux.pipeline(prompts, generator=flux.generators(0, range(BATCH)), output_type="latent", **kwargs)

    t = _median_times(
        {
            "bare": bare,
            "one_hook": lambda: flux.capture(prompts, ["double.2.img"], num_inference_steps=1, batch_size=BATCH),
            "all_streams": lambda: flux.capture(prompts, every, num_inference_steps=1, batch_size=BATCH),
        },
        args.rounds,
    )
    with tempfile.TemporaryDirectory() as tmp:
        prompt_file = Path(tmp) / "p.txt"
        prompt_file.write_text("\n".join([PROMPT] * 4 * BATCH))
        counter = iter(range(10_000))

        def cache() -> None:
            cfg = CacheConfig(model="x", prompts=str(prompt_file), hooks=["double.2.img"], out=f"{tmp}/c{next(counter)}",
                              num_inference_steps=1, batch_size=BATCH, shard_prompts=BATCH)
            write_cache(cfg, flux=flux)

        def bare4() -> None:
            for _ in range(4):
                bare()

        c = _median_times({"bare4": bare4, "cache": cache}, max(3, args.rounds // 3))
    small, large = (_rss_child(n) for n in args.rss_prompts)
    result = {
        "capture_one_hook_over_bare": round(t["one_hook"] / t["bare"], 3),
        "capture_all_streams_over_bare": round(t["all_streams"] / t["bare"], 3),
        "cache_end_to_end_over_bare": round(c["cache"] / c["bare4"], 3),
        f"peak_rss_{args.rss_prompts[1]}_over_{args.rss_prompts[0]}_prompts": round(large / small, 3),
        "all_streams_hooks": len(every),
        "bare_call_seconds": round(t["bare"], 4),
        "image_tokens": flux.grid()[0] * flux.grid()[1],
        "blocks": sum(flux.block_counts),
        "peak_rss_kb": {str(args.rss_prompts[0]): small, str(args.rss_prompts[1]): large},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
