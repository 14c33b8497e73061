"""What a real FLUX.1 run costs: cache bytes, host memory of loading, caching and SAE-training speed.

Prints one JSON object (docs/scale.md records it with this command). Everything is measured on
this machine's CPU, on the real-width model (FLUX.1's exact widths, 2 double + 2 single blocks,
bfloat16, :func:`sae_flux.tiny.real_width_config`), or computed from FLUX.1's published configs
and checked against such a measurement:

- ``cache``: bytes per cached token and per image at 256 / 512 / 1,024 px, one hook and all
  hooks, from ``width x dtype bytes + provenance bytes`` per token; the formula is checked
  against the bytes of a cache this script writes (``cache_formula_check``: measured / formula);
- ``memory``: peak host RSS of ``Flux.from_pretrained`` on a saved real-width pipeline and
  after one capture (the safetensors are memory-mapped: weights become resident as the forward
  reads them), in a fresh process (no offload: the host holds every weight, as it does under
  ``offload="model"`` / ``"sequential"``), and the same extrapolated to 19 + 38 blocks and
  T5-XXL by ``peak = baseline + ratio x weight bytes`` (``ratio`` measured here);
- ``speed``: FLOPs per cached image and per SAE-trained token, and CPU measurements of both
  (a capture of one hook, a TopK SAE training step) turned into achieved FLOP/s; the estimate
  for another device is ``tokens/s = device FLOP/s x utilisation / FLOPs per token``.

- ``ddp_training`` (``--only-ddp``): data-parallel SAE training step throughput under
  ``torchrun`` with 1 and 2 ranks of one thread each on this machine (gloo), in one run, and the
  ratio of the best of alternating runs (2 ranks over 1); each rank runs the training step of ``sae_flux.train`` (forward,
  backward, gradient all-reduce, clip and Adam step, dead-latent sync) on its half of the batch.

- ``cache_ranks`` (``--only-cache-ranks``; with ``--only-ddp`` too, both in one JSON): caching
  throughput of 2 ranks launched by ``torchrun`` over 1 process, on this machine's CPU cores, in one run. Each arm caches the same
  prompts with the same model into its own directory (the caches are checked to be the same
  bytes); throughput is cached tokens over the caching time (from a barrier after loading the
  model to the end of ``write_cache``, the slowest rank), and the whole-command wall time is
  reported too. The single process is measured at torch's default threads (all cores) and at one
  thread; the headline ratio is over the faster of the two. Each rank's time is broken down into
  capture + writing its shards and waiting in the per-round collectives, with the CPU time it
  got (``cpu_s`` over ``cache_s`` is the share of a core it ran on: below 1 when other jobs
  share the cores).

Run:  python benchmarks/scale.py [--skip-memory | --only-memory | --only-ddp] [--workdir DIR]
      python benchmarks/scale.py --only-cache-ranks [--cache-model organism] [--cache-prompts 256]
      python benchmarks/scale.py --only-cache-ranks --only-ddp   # both ratios, one run, one JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("benchmarks.scale")

RESOLUTIONS = (256, 512, 1024)
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
IMAGE_PROVENANCE_BYTES = 4 * 5  # prompt, step, h, w (int32) + timestep (float32)
TEXT_PROVENANCE_BYTES = 4 * 4  # prompt, step, token (int32) + timestep (float32)
FULL_DOUBLE, FULL_SINGLE = 19, 38
T5_TOKENS = {"schnell": 256, "dev": 512}


def _mb(n: float) -> float:
    return round(n / 2**20, 1)


# -- component sizes from FLUX.1's published configs (built on the meta device) -------------------


def flux1_component_params() -> dict[str, int]:
    """Parameters of FLUX.1-schnell's components, from their configs (no weights)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from sae_flux.tiny import _transformer, real_width_config

    with torch.device("meta"):
        transformer = _transformer(real_width_config(FULL_DOUBLE, FULL_SINGLE))
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                     num_heads=64, feed_forward_proj="gated-gelu"))
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, projection_dim=768))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), norm_num_groups=32)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"transformer": count(transformer), "t5_xxl": count(t5), "clip_l": count(clip), "vae": count(vae)}


def transformer_params(n_double: int, n_single: int) -> int:
    from sae_flux.tiny import _transformer, real_width_config

    with torch.device("meta"):
        model = _transformer(real_width_config(n_double, n_single))
    return sum(p.numel() for p in model.parameters())


# -- cache bytes ----------------------------------------------------------------------------------


def image_tokens(resolution: int) -> int:
    return (resolution // 16) ** 2  # VAE /8, then 2 x 2 packing


def cache_bytes(dtype: str = "bfloat16", variant: str = "schnell") -> dict[str, Any]:
    """Bytes per token and per image (one kept step) at FLUX.1's widths."""
    d, b = 3072, DTYPE_BYTES[dtype]
    img_token = d * b + IMAGE_PROVENANCE_BYTES
    mlp_token = 4 * d * b + IMAGE_PROVENANCE_BYTES
    txt_token = d * b + TEXT_PROVENANCE_BYTES
    n_text = T5_TOKENS[variant]
    out: dict[str, Any] = {"dtype": dtype, "text_tokens": n_text, "bytes_per_token": {
        "img_hook": img_token, "mlp_hook": mlp_token, "txt_hook": txt_token}}
    per_res = {}
    for res in RESOLUTIONS:
        n_img = image_tokens(res)
        # all hooks, no .delta (derivable): 19 x (img, txt, mlp) + 38 x (img, txt)
        all_hooks = (FULL_DOUBLE + FULL_SINGLE) * (n_img * img_token + n_text * txt_token) + FULL_DOUBLE * n_img * mlp_token
        per_res[str(res)] = {
            "image_tokens": n_img,
            "one_img_hook_per_image_MB": _mb(n_img * img_token),
            "one_img_hook_64_tokens_per_image_KB": round(64 * img_token / 1024, 1),
            "all_hooks_per_image_MB": _mb(all_hooks),
            "images_per_TB_one_hook": int(1e12 // (n_img * img_token)),
            "images_per_TB_one_hook_64_tokens": int(1e12 // (64 * img_token)),
        }
    out["per_image_one_step"] = per_res
    return out


def check_cache_formula(workdir: Path) -> dict[str, Any]:
    """Write a small tiny-model cache and compare its shard bytes per token with the formula."""
    from sae_flux.cache import CacheConfig, CacheReader, write_cache
    from sae_flux.flux import Flux

    flux = Flux.tiny(seed=0)
    prompts = workdir / "prompts.txt"
    prompts.write_text("\n".join(f"a red circle {i}" for i in range(8)) + "\n")
    hooks = ["double.1.img", "double.1.mlp", "single.1.txt"]
    write_cache(CacheConfig(model="tiny", prompts=str(prompts), hooks=hooks, out=str(workdir / "cache"),
                            num_inference_steps=1, dtype="bfloat16", shard_prompts=8), flux=flux)
    ratios = {}
    for hook in hooks:
        reader = CacheReader(workdir / "cache", hook=hook)
        size = sum(p.stat().st_size for p in (workdir / "cache" / hook).glob("*.safetensors"))
        prov = TEXT_PROVENANCE_BYTES if hook.endswith("txt") else IMAGE_PROVENANCE_BYTES
        formula = reader.num_tokens * (reader.d_model * 2 + prov)
        ratios[hook] = round(size / formula, 4)
    return {"model": "tiny (d=32)", "measured_over_formula": ratios,
            "note": "the excess is the safetensors header, fixed per shard"}


# -- host memory of loading -------------------------------------------------------------------------

_LOAD_CHILD = """
import sys, time, torch

def hwm():  # peak RSS of this process image (ru_maxrss would carry the parent's peak across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

from sae_flux.flux import Flux
base = hwm()
t = time.perf_counter()
flux = Flux.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
elapsed = time.perf_counter() - t
loaded = hwm()  # safetensors are memory-mapped: weights become resident as the forward reads them
flux.capture(["a red circle"], hooks=["double.1.img"], num_inference_steps=1)
print(base, loaded, hwm(), elapsed)
"""


def loading_memory(pipe: Any, workdir: Path) -> dict[str, Any]:
    """Save the real-width pipeline in bfloat16, load it in a fresh process, read its peak RSS."""
    from sae_flux.tiny import save_pipeline

    cfg = pipe.generation_defaults
    weight_bytes = sum(p.numel() * p.element_size() for m in pipe.components.values()
                       if isinstance(m, torch.nn.Module) for p in m.parameters())
    directory = workdir / "real-width"
    save_pipeline(pipe, directory, cfg)
    result = subprocess.run([sys.executable, "-c", _LOAD_CHILD, str(directory)], capture_output=True, text=True, check=True)
    base, loaded, peak, elapsed = (float(x) for x in result.stdout.split()[-4:])
    shutil.rmtree(directory)
    ratio = (peak - base) / weight_bytes  # after one forward: every weight has been read
    full = flux1_component_params()
    full_bytes = 2 * sum(full.values())
    return {
        "real_width_weight_MB": _mb(weight_bytes),
        "process_baseline_MB": _mb(base),
        "peak_rss_after_load_MB": _mb(loaded),
        "peak_rss_after_one_capture_MB": _mb(peak),
        "load_seconds": round(elapsed, 1),
        "ratio_peak_over_weights": round(ratio, 3),
        "flux1_params": full,
        "flux1_bf16_weight_GB": round(full_bytes / 1e9, 2),
        "extrapolated_host_peak_GB": {
            "host_load_or_offload": round((base + ratio * full_bytes) / 1e9, 1),
            "formula": "baseline + ratio x 2 B x (transformer + T5-XXL + CLIP-L + VAE params)",
        },
    }


# -- speed -------------------------------------------------------------------------------------------


def forward_flops(n_double: int, n_single: int, n_img: int, n_txt: int, d: int = 3072) -> float:
    """Multiply-add FLOPs (2 per MAC) of one transformer forward over one image.

    Linear layers: 2 x params x tokens, per block kind (image-stream and text-stream weights of
    a double block see their own tokens; a single block's weights see both); attention:
    4 x seq^2 x d per block (scores and weighted sum). Embedders and norms are left out (<2%).
    """
    seq = n_img + n_txt
    # a double block: per stream q,k,v,o (4 d^2) + MLP (8 d^2) + adaLN (6 d^2 from temb, per image not per token)
    double_linear = 2 * (12 * d * d) * n_img + 2 * (12 * d * d) * n_txt
    single_linear = 2 * (3 * d * d + 4 * d * d + 5 * d * d) * seq  # qkv, mlp in, out over [attn, mlp]
    attention = 4 * seq * seq * d
    return n_double * (double_linear + attention) + n_single * (single_linear + attention)


def measure_capture(flux: Any, repeats: int = 2) -> dict[str, Any]:
    prompts = ["a red circle"]
    flux.capture(prompts, hooks=["double.1.img"], num_inference_steps=1)  # warm up
    t = time.perf_counter()
    for _ in range(repeats):
        flux.capture(prompts, hooks=["double.1.img"], num_inference_steps=1)
    seconds = (time.perf_counter() - t) / repeats
    n_img = flux.grid()[0] * flux.grid()[1]
    n_txt = flux.defaults.max_sequence_length
    flops = forward_flops(*flux.block_counts, n_img, n_txt)
    return {"seconds_per_image_step": round(seconds, 2), "image_tokens": n_img, "text_tokens": n_txt,
            "estimated_gflop": round(flops / 1e9, 1), "achieved_gflops": round(flops / seconds / 1e9, 2)}


def measure_gemm(n: int, d: int = 3072, dtype: torch.dtype = torch.bfloat16) -> float:
    a, w = torch.randn(n, d, dtype=dtype), torch.randn(4 * d, d, dtype=dtype)
    a @ w.T
    t = time.perf_counter()
    for _ in range(5):
        a @ w.T
    return 5 * 2 * n * d * 4 * d / (time.perf_counter() - t) / 1e9


def sae_train_flops_per_token(d: int, d_sae: int) -> float:
    """Encoder + decoder matmuls, forward and backward (x3): 3 x 2 x 2 x d x d_sae."""
    return 12.0 * d * d_sae


def measure_sae_training(d: int = 3072, expansion: int = 4, batch: int = 1024, steps: int = 3) -> dict[str, Any]:
    from sae_flux.sources import TensorSource
    from sae_flux.train import TrainConfig, train_sae
    from sae_flux.train_config import DictionaryConfig, OptimConfig

    acts = torch.randn((steps + 1) * batch, d)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(out=out, sae=DictionaryConfig(expansion_factor=expansion, k=64, normalize="none"),
                          optim=OptimConfig(total_tokens=steps * batch, batch_size=batch), eval_tokens=batch)
        t = time.perf_counter()
        train_sae(cfg, source=TensorSource(acts))
        seconds = time.perf_counter() - t
    flops = sae_train_flops_per_token(d, d * expansion)
    return {"d_in": d, "d_sae": d * expansion, "batch": batch, "steps": steps,
            "tokens_per_second": round(steps * batch / seconds, 1),
            "gflop_per_token": round(flops / 1e9, 4),
            "achieved_gflops": round(steps * batch * flops / seconds / 1e9, 2),
            "note": "wall time includes the run's setup, evaluation and save"}


# -- caching on several ranks ------------------------------------------------------------------------


def cache_rank_child(work: Path, model: str, shard_prompts: int, batch_size: int, out: str) -> None:
    """One rank of a timed cache (run by torchrun, or alone): per-rank timings to ``work/OUT-rank-R.json``."""
    import sae_flux.cache as cache
    from sae_flux import distributed
    from sae_flux.threads import torch_threads

    working, written = [0.0], [0]
    write_one = cache._write_one

    def timed_write_one(*args: Any, **kwargs: Any) -> Any:  # capture + commit of one shard
        t = time.perf_counter()
        try:
            record = write_one(*args, **kwargs)
            written[0] += record.prompt_stop - record.prompt_start
            return record
        finally:
            working[0] += time.perf_counter() - t

    cache._write_one = timed_write_one  # type: ignore[assignment]
    cfg = cache.CacheConfig(model=model, prompts=str(work / "prompts.txt"), hooks=["double.1.img"], out=str(work / out),
                            shard_prompts=shard_prompts, batch_size=batch_size)
    with distributed.process_group() as ranks, torch_threads(distributed.rank_threads()):
        threads = torch.get_num_threads()
        t = time.perf_counter()
        flux = cache.load_flux(model)
        load_s = time.perf_counter() - t
        distributed.barrier()
        t, cpu = time.perf_counter(), time.process_time()
        manifest = cache.write_cache(cfg, flux=flux)
        cache_s, cpu_s = time.perf_counter() - t, time.process_time() - cpu
    record = {"rank": ranks.rank, "threads": threads, "load_s": round(load_s, 2), "cache_s": round(cache_s, 2),
              "capture_and_write_s": round(working[0], 2), "waiting_s": round(cache_s - working[0], 2),
              "cpu_s": round(cpu_s, 2), "prompts_written": written[0],
              "tokens": manifest.tokens("double.1.img")}
    (work / f"{out}-rank-{ranks.rank}.json").write_text(json.dumps(record))


def _cache_arm(work: Path, ranks: int, threads: int | None, args: argparse.Namespace, out: str) -> dict[str, Any]:
    child = [str(Path(__file__).resolve()), "--cache-rank-child", out, "--workdir", str(work),
             "--cache-model", args.cache_model, "--cache-shard-prompts", str(args.cache_shard_prompts),
             "--cache-batch-size", str(args.cache_batch_size)]
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else []
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    t = time.perf_counter()
    subprocess.run([sys.executable, *launcher, *child], check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    per_rank = [json.loads((work / f"{out}-rank-{r}.json").read_text()) for r in range(ranks)]
    cache_s = max(r["cache_s"] for r in per_rank)
    return {"ranks": ranks, "tokens_per_s": round(per_rank[0]["tokens"] / cache_s, 1), "cache_s": cache_s,
            "command_wall_s": round(wall, 2), "per_rank": per_rank}


def _cpu_ratio(one: dict[str, Any], ranks: list[dict[str, Any]]) -> float:
    """World size x (one thread's CPU seconds per prompt / a rank's): the ratio the ranks would
    reach if each had a core to itself and never waited (a derived bound, not a measurement)."""
    per_prompt = sum(r["cpu_s"] for r in ranks) / sum(r["prompts_written"] for r in ranks)
    return round(len(ranks) * one["cpu_s"] / one["prompts_written"] / per_prompt, 3)


def cache_ranks(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """2 ranks (torchrun, gloo) over 1 process: caching throughput, measured in this run."""
    from sae_flux.organism.world import prompts

    load_before = [round(x, 2) for x in os.getloadavg()]
    (work / "prompts.txt").write_text("\n".join(prompts(args.cache_prompts, seed=0)) + "\n")
    arms = {"one_one_thread": _cache_arm(work, 1, 1, args, "one-thread"),  # the two compared arms back to back
            "two_ranks": _cache_arm(work, 2, None, args, "two"),
            "one_default_threads": _cache_arm(work, 1, None, args, "one-default")}
    files = {name: {p.relative_to(work / name): p.read_bytes() for p in sorted((work / name).rglob("*")) if p.is_file()}
             for name in ("one-default", "one-thread", "two")}
    best_one = max(arms["one_default_threads"]["tokens_per_s"], arms["one_one_thread"]["tokens_per_s"])
    two = arms["two_ranks"]
    return {
        "model": args.cache_model, "prompts": args.cache_prompts, "shard_prompts": args.cache_shard_prompts,
        "cores": len(os.sched_getaffinity(0)), "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "two_over_one_throughput": round(two["tokens_per_s"] / best_one, 3),
        "two_over_one_default_threads": round(two["tokens_per_s"] / arms["one_default_threads"]["tokens_per_s"], 3),
        "two_over_one_one_thread": round(two["tokens_per_s"] / arms["one_one_thread"]["tokens_per_s"], 3),
        "two_over_one_command_wall": round(min(arms["one_default_threads"]["command_wall_s"],
                                               arms["one_one_thread"]["command_wall_s"]) / two["command_wall_s"], 3),
        "cpu_share_per_rank": [round(r["cpu_s"] / r["cache_s"], 3) for r in two["per_rank"]],
        "two_over_one_cpu_per_prompt": _cpu_ratio(arms["one_one_thread"]["per_rank"][0], two["per_rank"]),
        "same_bytes": files["one-default"] == files["two"] == files["one-thread"],
        "arms": arms,
    }


# -- data-parallel SAE training (issue 23) ------------------------------------------------------


def ddp_worker(out: Path, d: int, d_sae: int, k: int, batch: int, steps: int, warmup: int) -> None:
    """One rank of ``torchrun ... scale.py --ddp-worker``: time ``steps`` data-parallel training
    steps on this rank's slice of random global batches; rank 0 writes the result to ``out``."""
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_flux import data_parallel, distributed
    from sae_flux.train import TrainConfig, build_sae, trainer_config
    from sae_flux.train_config import DictionaryConfig, OptimConfig

    torch.set_num_threads(1)
    with distributed.process_group() as ranks:
        cfg = TrainConfig(out=str(out.parent), sae=DictionaryConfig(d_sae=d_sae, k=k, normalize="none"),
                          optim=OptimConfig(total_tokens=(steps + warmup) * batch, batch_size=batch))
        trainer = SAETrainer(trainer_config(cfg), build_sae(cfg, d, "bench", "bench"), iter(()))
        data_parallel.broadcast_state(trainer)
        gen = torch.Generator().manual_seed(0)
        batches = [torch.randn(batch, d, generator=gen) for _ in range(4)]
        rows = batch // ranks.world_size
        slices = [b[ranks.rank * rows : (ranks.rank + 1) * rows] for b in batches]
        with data_parallel.averaged_gradients(trainer.sae):
            for i in range(warmup):
                data_parallel.step(trainer, slices[i % 4], batch)
            distributed.barrier()
            t = time.perf_counter()
            for i in range(steps):
                data_parallel.step(trainer, slices[i % 4], batch)
            distributed.barrier()
            seconds = time.perf_counter() - t
        if ranks.is_main:
            out.write_text(json.dumps({"ranks": ranks.world_size, "seconds": round(seconds, 3),
                                       "tokens_per_second": round(steps * batch / seconds, 1)}))


def measure_ddp_training(workdir: Path, d: int = 256, d_sae: int = 2048, k: int = 32, batch: int = 2048,
                         steps: int = 20, warmup: int = 3, rounds: int = 2) -> dict[str, Any]:
    """Training step throughput with 1 and 2 ranks launched by torchrun (one thread per rank), in
    one run: ``rounds`` alternating runs of each (1, 2, 1, 2, ...), so that a change of the machine's
    load hits both; the best run of each is compared."""
    runs: dict[int, list[float]] = {1: [], 2: []}
    load_before = os.getloadavg()[0]
    for _ in range(rounds):
        for world in (1, 2):
            out = workdir / f"ddp-{world}.json"
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                            "--master_port", str(_free_port()), __file__, "--ddp-worker", str(out),
                            "--ddp-shape", *map(str, (d, d_sae, k, batch, steps, warmup))],
                           check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            runs[world].append(json.loads(out.read_text())["tokens_per_second"])
    best = {world: max(found) for world, found in runs.items()}
    return {"d_in": d, "d_sae": d_sae, "k": k, "global_batch": batch, "timed_steps": steps, "backend": "gloo",
            "threads_per_rank": 1, "tokens_per_second_1_rank": runs[1], "tokens_per_second_2_ranks": runs[2],
            "speedup_2_over_1": round(best[2] / best[1], 2),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ddp_section(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """``--only-ddp``: the data-parallel training section alone."""
    return {"ddp_training": measure_ddp_training(workdir, steps=args.ddp_steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-memory", action="store_true", help="skip the save-and-load memory measurement")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    parser.add_argument("--only-memory", action="store_true", help="only the save-and-load memory measurement")
    parser.add_argument("--only-cache-ranks", action="store_true",
                        help="only caching: 2 ranks (torchrun, gloo) over 1 process (with --only-ddp: both)")
    parser.add_argument("--cache-model", default="organism", help="model of --only-cache-ranks (tiny, organism)")
    parser.add_argument("--cache-prompts", type=int, default=256, help="prompts cached per arm of --only-cache-ranks")
    parser.add_argument("--cache-shard-prompts", type=int, default=16, help="prompts per shard in --only-cache-ranks")
    parser.add_argument("--cache-batch-size", type=int, default=8, help="prompts per pipeline call in --only-cache-ranks")
    parser.add_argument("--cache-rank-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only-ddp", action="store_true", help="only data-parallel training: 2 ranks over 1 (torchrun, gloo)")
    parser.add_argument("--ddp-steps", type=int, default=20, help="timed training steps per world size (--only-ddp)")
    parser.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)  # one rank, started by --only-ddp
    parser.add_argument("--ddp-shape", type=int, nargs=6, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker:
        ddp_worker(Path(args.ddp_worker), *args.ddp_shape)
        return
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sae-flux-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.cache_rank_child:
        cache_rank_child(workdir, args.cache_model, args.cache_shard_prompts, args.cache_batch_size, args.cache_rank_child)
        return
    if args.only_cache_ranks or args.only_ddp:  # the issue-23 sections: ratios measured in this run
        sections: dict[str, Any] = {}
        if args.only_cache_ranks:
            sections["cache_ranks"] = cache_ranks(workdir, args)
        if args.only_ddp:
            sections.update(ddp_section(args, workdir))
        print(json.dumps(sections, indent=1))
        return

    from sae_flux.flux import Flux
    from sae_flux.tiny import TinyFluxPipeline, build_pipeline, real_width_config

    report: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "device": "cpu"}
    if not args.only_memory:
        report["cache"] = cache_bytes("bfloat16")
        report["cache_float32_one_img_token_bytes"] = cache_bytes("float32")["bytes_per_token"]["img_hook"]
        report["cache_formula_check"] = check_cache_formula(workdir)
    cfg = real_width_config()
    t = time.perf_counter()
    pipe = TinyFluxPipeline(**build_pipeline(cfg, seed=0, dtype=torch.bfloat16).components)
    pipe.generation_defaults = cfg.defaults
    report["real_width_build_seconds"] = round(time.perf_counter() - t, 1)
    if not args.skip_memory:
        report["memory"] = loading_memory(pipe, workdir)
    if args.only_memory:
        print(json.dumps(report, indent=1))
        return
    flux = Flux.from_pipeline(pipe, model_id="real-width")
    capture = measure_capture(flux)
    capture["gemm_bf16_gflops_same_width"] = round(measure_gemm(capture["image_tokens"] + capture["text_tokens"]), 2)
    report["capture_real_width_64px"] = capture
    report["sae_training_cpu"] = measure_sae_training()
    full = {str(res): forward_flops(FULL_DOUBLE, FULL_SINGLE, image_tokens(res), T5_TOKENS["schnell"]) for res in RESOLUTIONS}
    report["flux1_forward_tflop_per_image_step"] = {k: round(v / 1e12, 2) for k, v in full.items()}
    report["flux1_transformer_params_formula"] = {
        "P(n_double, n_single)": "base + n_double x per_double + n_single x per_single",
        "per_double": transformer_params(1, 0) - transformer_params(0, 0),
        "per_single": transformer_params(0, 1) - transformer_params(0, 0),
        "base": transformer_params(0, 0),
    }
    report["peak_rss_MB"] = _mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
