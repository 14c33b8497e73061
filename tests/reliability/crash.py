"""The crash harness: kill every long job of sae-flux, resume it, compare with an uninterrupted run.

Five jobs run as their command lines on the tiny model: ``sae-flux cache``, ``sae-flux train``,
``itda build``, ``sae-flux interp index`` and ``sae-flux interp explain`` (answered by the
loopback VLM stand-in, ``tests/vlm_server.py``). Each run is a child process forked from the
harness once the packages are imported (a fresh interpreter costs a minute on a busy machine),
running the command line's ``main``; each kill is a real ``SIGKILL`` of that process, struck one
of two ways, in turn:

- ``op``: at a random file operation (``SAE_FLUX_CRASH_AFTER=k``, :mod:`_sae_flux_shared.commit`): the
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
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _sae_flux_shared.commit as commit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

logger = logging.getLogger("crash")

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
    return [module, *args]


def jobs(ws: Path, vlm_url: str) -> dict[str, Job]:
    """The five jobs on the workspace ``ws`` made by :func:`prepare`."""
    prompts, cache = str(ws / "prompts.txt"), str(ws / "cache")
    return {
        "cache": Job("cache", lambda out: _cli(
            "sae_flux.cli", "cache", "--model", "tiny", "--prompts", prompts, "--hooks", "double.1.img",
            "--out", str(out), "--num-inference-steps", "1", "--batch-size", "2", "--shard-prompts", "2")),
        "train": Job("train", lambda out: _cli(
            "sae_flux.cli", "train", "--cache", cache, "--out", str(out), "--expansion-factor", "2", "--k", "4",
            "--total-tokens", str(64 * 16), "--batch-size", "64", "--checkpoint-every", "4", "--log-every", "2",
            "--normalize-tokens", "256", "--buffer-tokens", "384", "--eval-tokens", "128")),
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
    (ws / "prompts.txt").write_text("\n".join(prompts(6, seed=0)) + "\n")
    placeholder = jobs(ws, "http://127.0.0.1:9/v1")
    for name, out in (("cache", ws / "cache"), ("train", ws / "sae"), ("interp index", ws / "index")):
        if not out.exists():
            _check(placeholder[name].argv(out), run(placeholder[name].argv(out)))
    images = _cli("sae_flux.cli", "interp", "images", str(ws / "index"), "--prompts", str(ws / "prompts.txt"),
                  "--model", "tiny", "--features", *FEATURES, "--min-tokens", "1")
    _check(images, run(images))


def _check(argv: list[str], status: int) -> None:
    if status != 0:
        raise RuntimeError(f"{argv} failed with status {status}")


def _main(argv: list[str]) -> int:
    """The command line's own entry point, in this process."""
    module, args = argv[0], argv[1:]
    if module == "itda.cli":
        from itda.cli import main as itda_main

        return itda_main(args)
    from sae_flux.cli import main

    return main(args)


def start(argv: list[str], crash_after: int | None = None, report: Path | None = None) -> int:
    """Fork a child that runs ``argv`` (killing itself at file operation ``crash_after``); its pid.

    ``report`` receives the number of file operations of a run that ends.
    """
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        commit._operations = 0
        os.environ.pop(commit.CRASH_ENV, None)
        if crash_after is not None:
            os.environ[commit.CRASH_ENV] = str(crash_after)
        status = _main(argv)
        if report is not None:
            report.write_text(str(commit.operations()))
    finally:
        os._exit(status)


def wait(pid: int) -> int:
    """The child's exit status (``-9`` when it was killed)."""
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def run(argv: list[str], crash_after: int | None = None) -> int:
    return wait(start(argv, crash_after))


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
    """The uninterrupted run: its files, its number of file operations and its duration."""
    report = out.with_name(out.name + ".operations")
    begin = time.monotonic()
    _check(job.argv(out), wait(start(job.argv(out), report=report)))
    duration = time.monotonic() - begin
    return files(job.output(out)), int(report.read_text()), duration


def kill_by_operation(job: Job, out: Path, k: int) -> bool:
    """Run the job until it kills itself at file operation ``k``; False when it finished first."""
    return run(job.argv(out), crash_after=k) == -signal.SIGKILL


def kill_by_time(job: Job, out: Path, delay: float) -> bool:
    """SIGKILL the job ``delay`` seconds after it started; False when it finished first."""
    pid = start(job.argv(out))
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    return wait(pid) == -signal.SIGKILL


def trial(job: Job, out: Path, expected: dict[str, bytes], how: str, point: float | int) -> Trial:
    killed = kill_by_operation(job, out, int(point)) if how == "op" else kill_by_time(job, out, float(point))
    corrupt = corrupt_files(out) if out.exists() else []
    status = run(job.argv(out) + job.resume_flag)
    got = files(job.output(out)) if status == 0 else {}
    differ = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
    return Trial(job.name, how, f"{point:.2f}s" if how == "time" else f"op {point}", killed, corrupt,
                 status == 0, status == 0 and not differ, f"exit {status}" if status else ", ".join(differ[:4]))


def sweep(ws: Path, names: list[str], kills: int, seed: int, vlm_url: str) -> list[Trial]:
    """Trials per job until ``kills`` of them killed it, alternating operation kills and timed kills."""
    rng = random.Random(seed)
    trials = []
    for name in names:
        job = jobs(ws, vlm_url)[name]
        base = ws / "runs" / name.replace(" ", "-")
        expected, total, duration = reference(job, base / "reference")
        logger.info("%s: %d file operations, %.1f s uninterrupted", name, total, duration)
        done = 0
        for i in range(2 * kills):  # until ``kills`` trials killed the job (a timed one may come too late)
            if done == kills:
                break
            how = "op" if i % 2 == 0 else "time"
            point: float | int = rng.randint(1, total) if how == "op" else rng.uniform(0, duration)
            result = trial(job, base / f"kill-{i:02d}", expected, how, point)
            logger.info("%s", result)
            trials.append(result)
            done += result.killed
    return trials


def table(trials: list[Trial]) -> str:
    """The Markdown table of docs/reliability.md: one row per job."""
    rows = ["| job | trials (op / timed) | killed before the end | corrupt file seen | resumed (exit 0) "
            "| equal to uninterrupted |", "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(t.job for t in trials):
        mine = [t for t in trials if t.job == name]
        ops = sum(t.how == "op" for t in mine)
        rows.append(f"| {name} | {len(mine)} ({ops} / {len(mine) - ops}) | {sum(t.killed for t in mine)} "
                    f"| {sum(bool(t.corrupt) for t in mine)} | {sum(t.resumed for t in mine)}/{len(mine)} "
                    f"| {sum(t.equal for t in mine)}/{len(mine)} |")
    return "\n".join(rows)


def _import_everything() -> None:
    """Import what the jobs load lazily once, here, so that no forked child imports it again."""
    import importlib

    for name in ("itda.cli", "itda.build", "itda.checkpoint", "itda.sources", "sae_flux.cli", "sae_flux.cache",
                 "sae_flux.flux", "sae_flux.train", "sae_flux.interp.index", "sae_flux.interp.explain",
                 "sae_flux.interp.chat", "sae_flux.interp.select", "sae_flux.dictionary", "wandb"):
        importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kills per job")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", nargs="+", default=["cache", "train", "itda build", "interp index", "interp explain"])
    parser.add_argument("--workspace", default="crash-out", help="scratch directory (removed first)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread: forking after torch is loaded is then safe
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from vlm_server import VLMServer

    _import_everything()

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
