"""Data-parallel SAE training on two gloo processes equals one process; resume under two ranks;
refusals on every rank alike; the real launcher (torchrun) on the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ranks.spawn import run_ranks
from reliability.crashing_source import Crash, CrashingSource
from sae_lens import SAE

from sae_flux.cli import main as cli_main
from sae_flux.sources import TensorSource
from sae_flux.threads import torch_threads
from sae_flux.train import DictionaryConfig, OptimConfig, TrainConfig, checkpoints, train_sae

#: Two ranks average their slices' gradients where one process takes the gradient of the whole
#: batch: the sums are grouped differently, so the weights agree to float32 rounding, not bits.
#: Over 120 Adam steps on CPU the largest difference seen was 2.4e-7 (test below prints it).
DDP_ATOL = 1e-5
DDP_RTOL = 1e-4

STEPS = 120
BATCH = 64
#: TopK selects per token; BatchTopK and Matryoshka BatchTopK over the whole (global) batch.
ARCHITECTURES = {
    "topk": DictionaryConfig(expansion_factor=4, k=8, normalize_tokens=512),
    "batchtopk": DictionaryConfig(architecture="batchtopk", expansion_factor=4, k=8, normalize_tokens=512),
    "matryoshka_batchtopk": DictionaryConfig(architecture="matryoshka_batchtopk", expansion_factor=4, k=8,
                                             normalize_tokens=512, options=["matryoshka_widths=[32,128]"]),
}


def _acts() -> torch.Tensor:
    """4096 tokens of width 32: sums of 3 of 64 random directions with random sizes, plus noise
    (the same tensor in every process)."""
    gen = torch.Generator().manual_seed(0)
    dirs_FD = torch.randn(64, 32, generator=gen)
    picks_NF = torch.zeros(4096, 64).scatter_(1, torch.randint(0, 64, (4096, 3), generator=gen), 1.0)
    sizes_NF = picks_NF * torch.rand(4096, 64, generator=gen) * 3
    return sizes_NF @ dirs_FD + 0.05 * torch.randn(4096, 32, generator=gen)


def _cfg(out: str | Path, **kw: Any) -> TrainConfig:
    sae = kw.pop("sae", ARCHITECTURES["topk"])
    optim = kw.pop("optim", OptimConfig(total_tokens=STEPS * BATCH, batch_size=BATCH, lr=1e-3))
    return TrainConfig(out=str(out), sae=sae, optim=optim, eval_tokens=512, log_every=10, **kw)


def _train(out: str, resume: bool = False, crash_after: int | None = None, **kw: Any) -> dict[str, Any] | str:
    """One rank's run: its returned weights, or the crash message."""
    from sae_flux import distributed

    torch.set_num_threads(1)
    acts = _acts()
    source = TensorSource(acts) if crash_after is None else CrashingSource(acts, crash_after)
    try:
        result = train_sae(_cfg(out, **kw), resume=resume, source=source)
    except Crash as crash:
        return str(crash)
    # numpy, not tensors: a tensor crosses processes in shared memory that is gone when this one ends
    return {"rank": distributed.ranks().rank, "state": {k: v.numpy() for k, v in result.sae.state_dict().items()},
            "steps": result.steps, "fvu": result.metrics.fvu}


def _crash_then_resume(crashed: str, resumed: str) -> dict[str, Any]:
    """In one process group (``train_sae`` called inside it): a run killed after 70 steps, then
    resumed; and the resume of the checkpoint a single process wrote in ``resumed``."""
    from sae_flux import distributed

    with distributed.process_group():
        killed = _train(crashed, crash_after=70, checkpoint_every=25)
        kept = [p.name for p in checkpoints(Path(crashed))]
        return {"killed": killed, "kept": kept,
                "two_from_two": _train(crashed, resume=True, checkpoint_every=25),
                "two_from_one": _train(resumed, resume=True, checkpoint_every=25)}


def _refusals(root: str, cases: dict[str, dict[int, dict[str, Any]]]) -> dict[str, str]:
    """The one line each case is refused with on this rank (``cases``: name -> rank -> config
    changes; ``acts``: how many tokens this rank's source holds)."""
    from _sae_flux_shared.usererror import describe
    from sae_flux import distributed

    torch.set_num_threads(1)
    lines = {}
    with distributed.process_group() as ranks:
        for name, per_rank in cases.items():
            changes = dict(per_rank.get(ranks.rank, {}))
            acts = changes.pop("acts", 4096)
            try:
                train_sae(_cfg(Path(root) / name, **changes), source=TensorSource(_acts()[:acts]))
                lines[name] = "accepted"
            except (ValueError, OSError) as error:
                lines[name] = describe(error)
    return lines


def _log(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _assert_same_weights(got: dict[str, Any], want: dict[str, torch.Tensor]) -> float:
    got = {name: torch.as_tensor(value) for name, value in got.items()}
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=DDP_ATOL, rtol=DDP_RTOL)
    return max(float((got[name] - value).abs().max()) for name, value in want.items())


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One thread per process, as each rank runs (restored afterwards)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """The single-process runs every test compares against, by architecture."""
    root = tmp_path_factory.mktemp("ddp")
    return {name: (root / name, train_sae(_cfg(root / name, sae=sae), source=TensorSource(_acts())).sae.state_dict())
            for name, sae in ARCHITECTURES.items()}


def _train_each(root: str) -> dict[str, Any]:
    """Each architecture's run, one after the other in one process group."""
    from sae_flux import distributed

    with distributed.process_group():
        return {name: _train(str(Path(root) / name), sae=sae) for name, sae in ARCHITECTURES.items()}


def test_two_ranks_train_the_single_process_sae_and_save_it_once(references, tmp_path):
    results = run_ranks(_train_each, 2, str(tmp_path))
    for name, (one, want) in references.items():
        two = tmp_path / name
        rank0, rank1 = results[0][name], results[1][name]
        worst = _assert_same_weights(rank0["state"], want)
        print(f"{name}: largest weight difference, 2 ranks vs 1 process after {STEPS} steps: {worst:.3g}")
        for key, value in rank0["state"].items():  # both ranks return the dictionary rank 0 saved
            assert (rank1["state"][key] == value).all()
        assert rank0["steps"] == rank1["steps"] == STEPS
        # the log is the single-process one: global loss, FVU and L0 of the whole batch, global dead fraction
        two_log, one_log = _log(two), _log(one)
        assert [r["step"] for r in two_log] == [r["step"] for r in one_log] == list(range(10, STEPS + 1, 10))
        for got, ref in zip(two_log, one_log, strict=True):
            assert got["tokens"] == ref["tokens"]
            assert got["l0"] == ref["l0"] and got["dead_fraction"] == ref["dead_fraction"]
            assert got == pytest.approx(ref, rel=1e-4, abs=1e-6)  # every loss (inner Matryoshka ones too), FVU, lr
        assert any(r["dead_fraction"] > 0 and r["auxiliary_reconstruction_loss"] > 0 for r in one_log)  # AuxK ran
        # the same files and format as a single-process run, loaded by plain sae_lens
        assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
        assert json.loads((two / "cfg.json").read_text()) == json.loads((one / "cfg.json").read_text())
        _assert_same_weights(SAE.load_from_disk(two).state_dict(), SAE.load_from_disk(one).state_dict())
    for name in ("batchtopk", "matryoshka_batchtopk"):  # saved as sae_lens saves them: JumpReLU
        assert json.loads((tmp_path / name / "cfg.json").read_text())["architecture"] == "jumprelu"


def test_resume_under_two_ranks_from_a_checkpoint_of_two_ranks_or_of_one_process(references, tmp_path):
    _, want = references["topk"]
    one = tmp_path / "one"
    with pytest.raises(Crash):
        train_sae(_cfg(one, checkpoint_every=25), source=CrashingSource(_acts(), after=70))
    results = run_ranks(_crash_then_resume, 2, str(tmp_path / "two"), str(one))
    for found in results:
        assert found["killed"] == "killed after 70 batches"
        assert found["kept"] == ["step-00000025", "step-00000050"]
    _assert_same_weights(results[0]["two_from_two"]["state"], want)
    _assert_same_weights(results[0]["two_from_one"]["state"], want)
    for resumed in ("two", "one"):  # one log, cut back to the checkpoint and continued
        assert [r["step"] for r in _log(tmp_path / resumed)] == list(range(10, STEPS + 1, 10))


def test_bad_settings_are_refused_on_every_rank_in_one_line(tmp_path):
    odd = OptimConfig(total_tokens=STEPS * 63, batch_size=63, lr=1e-3)
    other = OptimConfig(total_tokens=STEPS * BATCH, batch_size=BATCH, lr=5e-3)
    cases = {
        "odd": {0: {"optim": odd}, 1: {"optim": odd}},
        "mixed": {1: {"optim": other}},
        "no-data-on-rank-1": {1: {"acts": 10}},
        "other-data-on-rank-1": {1: {"acts": 2048}},
        "used-out": {},  # found by rank 0 alone, refused on both
        "one-gpu-for-all": {0: {"device": "cuda:0"}, 1: {"device": "cuda:0"}},
    }
    (tmp_path / "used-out").mkdir()
    (tmp_path / "used-out" / "notes.txt").write_text("not a run")
    lines = run_ranks(_refusals, 2, str(tmp_path), cases, timeout_s=200)
    assert lines[0] == lines[1]
    assert lines[0] == {
        "odd": "the batch size 63 does not divide into 2 ranks: give a multiple of 2 (e.g. 64)",
        "mixed": "rank 1 was started with other training settings than rank 0: optim.lr: saved 0.001, now 0.005",
        "no-data-on-rank-1": "the tensor source holds 10 tokens, fewer than one batch of 64: lower the batch "
                             "size to at most 10 or add data",
        "other-data-on-rank-1": "rank 1 was started with other training data than rank 0: "
                                "num_tokens: saved 4096, now 2048",
        "used-out": f"output directory {tmp_path / 'used-out'} is not empty and holds no checkpoint",
        "one-gpu-for-all": "--device cuda:0 names one GPU for all 2 ranks: give --device cuda (each rank "
                           "then uses cuda:LOCAL_RANK)",
    }


def test_torchrun_trains_from_the_cli_as_one_process_does(tiny_flux, tmp_path):
    """``python -m torch.distributed.run --nproc_per_node 2 -m sae_flux.cli train`` on a cache, as a
    user runs it, saves the dictionary ``sae-flux train`` saves in one process."""
    from ranks.spawn import free_port

    from sae_flux.cache import CacheConfig, write_cache

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a {c} {s}" for c in ("red", "green", "blue", "yellow")
                                 for s in ("circle", "square", "triangle", "star")) + "\n")
    cache = tmp_path / "cache"  # 16 prompts x 2 steps x 64 tokens = 2048 tokens of width 32
    write_cache(CacheConfig(model="tiny", prompts=str(prompts), hooks=["double.1.img"], out=str(cache),
                            num_inference_steps=2, batch_size=8, shard_prompts=8), flux=tiny_flux)
    args = ["train", "--cache", str(cache), "--expansion-factor", "4", "--k", "8", "--normalize-tokens", "512",
            "--total-tokens", str(30 * BATCH), "--batch-size", str(BATCH), "--lr", "1e-3", "--eval-tokens", "512"]
    root = str(Path(__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    assert cli_main([*args, "--out", str(tmp_path / "one")]) == 0
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), "-m", "sae_flux.cli", *args,
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    _assert_same_weights(SAE.load_from_disk(tmp_path / "two").state_dict(),
                         SAE.load_from_disk(tmp_path / "one").state_dict())
    assert _log(tmp_path / "two")[-1]["step"] == 30
