"""CLI start-up: ``sae-flux --help``, ``itda --help``, ``cae --help`` over ``import torch`` (issue 15).

Each command runs in a fresh interpreter (``python -m sae_flux.cli --help``, the console
scripts' entry points), as does ``python -c "import torch"``, the floor any command that
touches a model pays. Runs are interleaved (one of each per round, after a warm-up round that
fills the file cache) and the median wall time of each is used, so load from other processes
hits all arms alike. Prints one JSON object: the three ratios (goal <= 0.3) and the raw
seconds.

    python benchmarks/cli.py [--repeats 9] [--root DIR]

``--root`` times the CLIs of another checkout (for a before / after comparison); by default the
checkout this script lives in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "sae-flux --help": ["-m", "sae_flux.cli", "--help"],
    "itda --help": ["-m", "itda.cli", "--help"],
    "cae --help": ["-m", "cae.cli", "--help"],
    "import torch": ["-c", "import torch"],
}


def _wall_time(args: list[str], root: Path, env: dict[str, str]) -> float:
    """Seconds from start to exit of ``python ARGS`` run in ``root`` (it must succeed)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_times(root: Path, repeats: int) -> dict[str, float]:
    """Median wall time of every command, interleaved over ``repeats`` rounds after a warm-up."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for round_ in range(repeats + 1):
        for name, args in COMMANDS.items():
            seconds = _wall_time(args, root, env)
            if round_:
                times[name].append(seconds)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (after one warm-up)")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose CLIs are timed")
    args = parser.parse_args()
    t = median_times(args.root.resolve(), args.repeats)
    torch_s = t["import torch"]
    result = {
        "sae_flux_help_over_import_torch": round(t["sae-flux --help"] / torch_s, 3),
        "itda_help_over_import_torch": round(t["itda --help"] / torch_s, 3),
        "cae_help_over_import_torch": round(t["cae --help"] / torch_s, 3),
        "seconds": {name: round(s, 3) for name, s in t.items()},
        "repeats": args.repeats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
