"""The crash harness: kill every long job of sae-flux, resume it, compare with an uninterrupted run.

Five jobs run as their command lines on the tiny model: ``sae-flux cache``, ``sae-flux train``,
``itda build``, ``sae-flux interp index`` and ``sae-flux interp explain`` (answered by the
loopback VLM stand-in, ``tests/vlm_server.py``). Each kill is a real ``SIGKILL`` of the job's
process, struck one of two ways, in turn:

- ``op``: at a random file operation (``SAE_FLUX_CRASH_AFTER=k``, :mod:`_sae_flux_commit`): the
  process kills itself right after writing or renaming its k-th file, i.e. between any two renames;
- ``time``: from outside, at a random moment of the job's run (after its output directory appeared).

After each kill the harness checks that no visible file is corrupt (every JSON parses, every
safetensors file loads, every PNG decodes; only a torn *last* line of an append-only log is
allowed), resumes the job with its ``--resume`` command (it must exit 0: no dead end), and
compares every output file with the uninterrupted run's, byte for byte (``index.json`` and
``train_config.json`` name their own directory; that one string is masked).

Run the full sweep and print its table (docs/reliability.md records one)::

    PYTHONPATH=. python tests/reliability/crash.py --kills 10 --seed 0

``tests/reliability/test_crash.py`` runs a reduced version in the default tier and this sweep
behind the ``slow`` marker.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _sae_flux_commit as commit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

logger = logging.getLogger("crash")

PYTHON = sys.executable
FEATURES = ("0", "1", "2", "3", "4", "5")
"""Features ``interp explain`` interprets (each one a VLM explanation and a detection score)."""


@dataclass
class Job:
    """One long job: its command line for an output path, and how resume is asked for."""

    name: str
    argv: Callable[[Path], list[str]]
    resume_flag: list[str] = field(default_factory=lambda: ["--resume"])
    output: Callable[[Path], Path] = lambda out: out
    """The directory whose files are compared (explain writes a results file in ``out``)."""


def _cli(module: str, *args: str) -> list[str]:
    return [PYTHON, "-m", module, *args]


def jobs(ws: Path, vlm_url: str) -> dict[str, Job]:
    """The five jobs on the workspace ``ws`` made by :func:`prepare`."""
    prompts, cache = str(ws / "prompts.txt"), str(ws / "cache")
    return {
        "cache": Job("cache", lambda out: _cli(
            "sae_flux.cli", "cache", "--model", "tiny", "--prompts", prompts, "--hooks", "double.1.img",
            "--out", str(out), "--steps", "0", "--batch-size", "2", "--shard-prompts", "2")),
        "train": Job("train", lambda out: _cli(
            "sae_flux.cli", "train", "--cache", cache, "--out", str(out), "--expansion-factor", "2", "--k", "4",
            "--total-tokens", str(64 * 40), "--batch-size", "64", "--checkpoint-every", "8", "--log-every", "4",
            "--normalize-tokens", "256", "--buffer-tokens", "512", "--eval-tokens", "256")),
        "itda build": Job("itda build", lambda out: _cli(
            "itda.cli", "build", "--cache", cache, "--out", str(out), "--batch-size", "32", "--checkpoint-every",
            "2", "--target-l0", "4", "--loss-threshold", "0.3", "--no-progress")),
        "interp index": Job("interp index", lambda out: _cli(
            "sae_flux.cli", "interp", "index", cache, "--dictionary", str(ws / "sae"), "--out", str(out),
            "--images-per-shard", "2", "--batch-images", "2")),
        "interp explain": Job("interp explain", lambda out: _cli(
            "sae_flux.cli", "interp", "explain", str(ws / "index"), "--prompts", prompts, "--model", "tiny",
            "--features", *FEATURES, "--min-tokens", "1", "--base-url", vlm_url, "--vlm-model", "stand-in",
            "--max-retries", "0", "--results", str(out / "results.jsonl"), "--cache-dir", str(out / "answers")),
            resume_flag=[]),
    }


def prepare(ws: Path) -> None:
    """Prompts, a cache, an SAE and an index with its images: the inputs of the later jobs."""
    from sae_flux.organism.world import prompts

    ws.mkdir(parents=True, exist_ok=True)
    (ws / "prompts.txt").write_text("\n".join(prompts(8, seed=0)) + "\n")
    placeholder = jobs(ws, "http://127.0.0.1:9/v1")
    for name, out in (("cache", ws / "cache"), ("train", ws / "sae"), ("interp index", ws / "index")):
        if not out.exists():
            _check(subprocess.run(placeholder[name].argv(out), env=_env(), capture_output=True, text=True))
    _check(subprocess.run(_cli("sae_flux.cli", "interp", "images", str(ws / "index"), "--prompts",
                               str(ws / "prompts.txt"), "--model", "tiny", "--features", *FEATURES,
                               "--min-tokens", "1"), env=_env(), capture_output=True, text=True))


def _check(done: subprocess.CompletedProcess[str]) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{done.args} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def _env(crash_after: int | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    env.pop(commit.CRASH_ENV, None)
    if crash_after is not None:
        env[commit.CRASH_ENV] = str(crash_after)
    return env


# -- one job -----------------------------------------------------------------------------------------


def files(out: Path) -> dict[str, bytes]:
    """Every committed file's bytes, its own directory name masked (``index.json``, ``train_config.json``)."""
    found = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if path.is_file() and not any(commit.is_temporary(p) for p in rel.parts):
            found[str(rel)] = path.read_bytes().replace(str(out).encode(), b"<OUT>")
    return found


def corrupt_files(out: Path) -> list[str]:
    """Visible files that do not parse (a torn last line of an append-only log is allowed)."""
    from PIL import Image
    from safetensors.torch import load_file

    bad = []
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if not path.is_file() or any(commit.is_temporary(p) for p in rel.parts):
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                load_file(str(path))
            elif path.suffix == ".jsonl":
                commit.read_jsonl(path)
            elif path.suffix == ".png":
                Image.open(path).verify()
        except Exception as err:  # noqa: BLE001  (the harness reports any failure to parse as corruption)
            bad.append(f"{rel}: {err}")
    return bad


@dataclass
class Trial:
    job: str
    how: str
    point: str
    killed: bool
    corrupt: list[str]
    resumed: bool
    equal: bool
    detail: str = ""


def reference(job: Job, out: Path) -> tuple[dict[str, bytes], int, float]:
    """The uninterrupted run: its files, its file operations (counted in-process) and its duration."""
    from _sae_flux_commit import crash_after, operations

    start = time.monotonic()
    _check(subprocess.run(job.argv(out), env=_env(), capture_output=True, text=True))
    duration = time.monotonic() - start
    counted = out.with_name(out.name + "-count")
    argv = job.argv(counted)
    with crash_after(None):
        _in_process(argv)
        total = operations()
    return files(job.output(out)), total, duration


def _in_process(argv: list[str]) -> int:
    module, args = argv[2], argv[3:]
    if module == "itda.cli":
        from itda.cli import main as itda_main

        return itda_main(args)
    from sae_flux.cli import main

    return main(args)


def kill_by_operation(job: Job, out: Path, k: int) -> bool:
    """Run the job until it kills itself at file operation ``k``; False when it finished first."""
    done = subprocess.run(job.argv(out), env=_env(k), capture_output=True, text=True)
    return done.returncode == -signal.SIGKILL


def kill_by_time(job: Job, out: Path, delay: float, timeout: float = 600) -> bool:
    """SIGKILL the job ``delay`` seconds after its output appeared; False when it finished first."""
    proc = subprocess.Popen(job.argv(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def trial(job: Job, out: Path, expected: dict[str, bytes], how: str, point: float | int) -> Trial:
    killed = kill_by_operation(job, out, int(point)) if how == "op" else kill_by_time(job, out, float(point))
    corrupt = corrupt_files(out) if out.exists() else []
    done = subprocess.run(job.argv(out) + job.resume_flag, env=_env(), capture_output=True, text=True)
    got = files(job.output(out)) if done.returncode == 0 else {}
    differ = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
    detail = done.stderr.strip().splitlines()[-1] if done.returncode else ", ".join(differ[:4])
    return Trial(job.name, how, f"{point:.2f}s" if how == "time" else f"op {point}", killed, corrupt,
                 done.returncode == 0, done.returncode == 0 and not differ, detail)


def sweep(ws: Path, names: list[str], kills: int, seed: int, vlm_url: str) -> list[Trial]:
    """``kills`` trials per job, alternating operation kills and timed kills."""
    rng = random.Random(seed)
    trials = []
    for name in names:
        job = jobs(ws, vlm_url)[name]
        base = ws / "runs" / name.replace(" ", "-")
        expected, total, duration = reference(job, base / "reference")
        logger.info("%s: %d file operations, %.1f s uninterrupted", name, total, duration)
        for i in range(kills):
            how = "op" if i % 2 == 0 else "time"
            point: float | int = rng.randint(1, total) if how == "op" else rng.uniform(0, duration)
            result = trial(job, base / f"kill-{i:02d}", expected, how, point)
            logger.info("%s", result)
            trials.append(result)
    return trials


def table(trials: list[Trial]) -> str:
    """The Markdown table of docs/reliability.md: one row per job."""
    rows = ["| job | kills (op / timed) | killed before the end | corrupt file seen | resumed (exit 0) "
            "| equal to uninterrupted |", "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(t.job for t in trials):
        mine = [t for t in trials if t.job == name]
        ops = sum(t.how == "op" for t in mine)
        rows.append(f"| {name} | {len(mine)} ({ops} / {len(mine) - ops}) | {sum(t.killed for t in mine)} "
                    f"| {sum(bool(t.corrupt) for t in mine)} | {sum(t.resumed for t in mine)}/{len(mine)} "
                    f"| {sum(t.equal for t in mine)}/{len(mine)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kills per job")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", nargs="+", default=["cache", "train", "itda build", "interp index", "interp explain"])
    parser.add_argument("--workspace", default="crash-out", help="scratch directory (removed first)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import shutil

    from vlm_server import VLMServer

    ws = Path(args.workspace)
    shutil.rmtree(ws, ignore_errors=True)
    prepare(ws)
    with VLMServer() as vlm:
        trials = sweep(ws, args.jobs, args.kills, args.seed, vlm.url)
    print(table(trials))  # noqa: T201 (the script's output)
    failed = [t for t in trials if t.corrupt or not t.resumed or not t.equal]
    for t in failed:
        print(f"FAILED {t}")  # noqa: T201
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
