"""Activation caching on several ranks (gloo processes spawned by the test, as torchrun starts them):
the same files as one process, resume after a kill and under another world size, and one-line
refusals on every rank.

The spawned runs are the slow part (each rank loads the tiny Flux, ~6 s), so one spawn plays
several scenarios (module fixture ``two_ranks``) and the tests below read its results.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ranks.spawn import RankFailed, free_port, run_ranks

from _sae_flux_shared import commit
from sae_flux.cache import CacheConfig, Manifest, write_cache

PROMPTS = [f"a {c} {s}" for c in ("red", "blue", "green", "white") for s in ("circle", "square")]
HOOKS = ["double.1.img", "double.0.txt"]


def _cfg(work: Path, out: str, **kw: Any) -> CacheConfig:
    base: dict[str, Any] = dict(model="tiny", prompts=str(work / "prompts.txt"), hooks=HOOKS, out=str(work / out),
                                num_inference_steps=1, batch_size=2, shard_prompts=2)
    base.update(kw)
    return CacheConfig(**base)


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# -- what every rank runs -------------------------------------------------------------------------


def _scenarios(work_dir: str) -> dict[str, str]:
    """Rank r's part in: a cache of 4 shards, a cache of 1 shard (rank 1 idle), the resume of a
    1-rank partial cache, ranks with other seeds, a prompt file missing on rank 1 only."""
    from sae_flux import distributed
    from sae_flux.cache import load_flux

    work = Path(work_dir)
    with distributed.process_group() as ranks:
        flux = load_flux("tiny")
        write_cache(_cfg(work, "two"), flux=flux)
        write_cache(_cfg(work, "idle", shard_prompts=len(PROMPTS)), flux=flux)
        write_cache(_cfg(work, "from-one"), resume=True, flux=flux)
        results = {"threads": str(distributed.rank_threads())}
        try:
            write_cache(_cfg(work, "other", seed=ranks.rank), flux=flux)
        except ValueError as error:
            results["other-settings"] = str(error)
        try:
            write_cache(_cfg(work, "missing", prompts=str(work / ("prompts.txt" if ranks.is_main else "nope.txt"))),
                        flux=flux)
        except FileNotFoundError as error:  # rank 1's error, raised on every rank
            results["missing-on-one-rank"] = str(error)
        return results


def _killed_at(work_dir: str, operation: int) -> None:
    """Rank 1 is killed (SIGKILL) at its ``operation``-th file operation."""
    if os.environ["RANK"] == "1":
        os.environ[commit.CRASH_ENV] = str(operation)
    write_cache(_cfg(Path(work_dir), "killed"))


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("ranks")
    (work / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return work


@pytest.fixture(scope="module")
def reference(work: Path, tiny_flux: Any) -> dict[str, bytes]:
    """The cache one process writes."""
    write_cache(_cfg(work, "one"), flux=tiny_flux)
    return _files(work / "one")


@pytest.fixture(scope="module")
def two_ranks(work: Path, tiny_flux: Any) -> dict[str, str]:
    with commit.crash_after(7), pytest.raises(commit.InjectedCrash):  # shard 0 (4 files) + manifest (2)
        write_cache(_cfg(work, "from-one"), flux=tiny_flux)
    assert [s.index for s in Manifest.load(work / "from-one").shards] == [0]
    results = run_ranks(_scenarios, 2, str(work), timeout_s=240)
    assert results[0]["threads"] == results[1]["threads"] == str(max(1, len(os.sched_getaffinity(0)) // 2))
    return results[0] | {"rank-1-" + k: v for k, v in results[1].items()}


# -- the tests ------------------------------------------------------------------------------------


def test_two_ranks_write_the_same_bytes_as_one_process(work, two_ranks, reference):
    assert sorted(reference) == [f"{hook}/shard-0000{k}.safetensors" for hook in sorted(HOOKS) for k in range(4)] + [
        "manifest.json"]
    assert _files(work / "two") == reference  # every shard's bytes, and the manifest (no world size in it)


def test_a_rank_without_a_shard_idles_and_the_cache_is_unchanged(work, two_ranks, tiny_flux):
    write_cache(_cfg(work, "idle-one", shard_prompts=len(PROMPTS)), flux=tiny_flux)
    assert _files(work / "idle") == _files(work / "idle-one")
    assert len(Manifest.load(work / "idle").shards) == 1


def test_two_ranks_resume_a_cache_one_process_left_unfinished(work, two_ranks, reference):
    assert _files(work / "from-one") == reference


def test_ranks_started_with_other_settings_are_refused_on_every_rank(two_ranks):
    line = "rank 1 was started with other cache settings than rank 0: seed: saved 0, now 1"
    assert two_ranks["other-settings"] == two_ranks["rank-1-other-settings"] == line


def test_a_rank_refusing_its_input_stops_every_rank_with_one_line(work, two_ranks):
    line = f"caption source {work}/nope.txt does not exist"
    assert two_ranks["missing-on-one-rank"] == two_ranks["rank-1-missing-on-one-rank"] == line
    assert not (work / "missing").exists()


def test_a_killed_rank_stops_the_job_and_one_process_resumes_it_to_the_same_bytes(work, tiny_flux, reference):
    # rank 1 writes shards 1 and 3 (4 file operations each): killed at the first of shard 3
    with pytest.raises(RankFailed, match=r"rank 1: died without a result \(exit code -9\)"):
        run_ranks(_killed_at, 2, str(work), 5, timeout_s=120, env={"SAE_FLUX_TIMEOUT_S": "60"})
    killed = work / "killed"
    left = Manifest.load(killed)
    assert not left.complete and [s.index for s in left.shards] == [0, 1]
    write_cache(_cfg(work, "killed"), resume=True, flux=tiny_flux)
    assert _files(killed) == reference


def test_torchrun_launches_the_cli_on_two_ranks_as_a_user_would(work, reference):
    flags = ["--model", "tiny", "--prompts", str(work / "prompts.txt"), "--hooks", *HOOKS,
             "--num-inference-steps", "1", "--batch-size", "2", "--shard-prompts", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), "-m", "sae_flux.cli", "cache", *flags,
                           "--out", str(work / "torchrun")], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _files(work / "torchrun") == reference


def test_shards_are_dealt_round_robin_over_the_shards_still_to_write():
    from sae_flux.cache import _my_shards
    from sae_flux.distributed import Ranks

    todo = [1, 2, 4, 5, 6]  # shards 0 and 3 already in the manifest
    assert _my_shards(todo, Ranks(0, 2, 0)) == [1, 4, 6]
    assert _my_shards(todo, Ranks(1, 2, 1)) == [2, 5, None]  # idle in the last round
    assert _my_shards(todo, Ranks(0, 1, 0)) == todo
    assert _my_shards([3], Ranks(2, 4, 2)) == [None]
