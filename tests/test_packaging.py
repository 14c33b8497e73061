"""The wheel a user installs: built from the checkout, installed into a fresh virtual environment
beside the newest sae-lens and nnsight, and run from a folder outside the checkout (slow tier:
the install takes minutes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sae_flux", "itda", "cae", "_sae_flux_requirements", "_sae_flux_cliargs")
TORCH_LOCAL = "torch==2.13.0"
"""Installed first when it lies in pip's find-links (as the Makefile does), so no CUDA build is pulled."""


def _run(*args: str | Path, cwd: Path, timeout: int = 1800) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the checkout, so no stale ``build/`` of an earlier build slips in."""
    out = tmp_path_factory.mktemp("wheel")
    source = shutil.copytree(ROOT, out / "source", ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", "*-out", "runs"))
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, source, cwd=out)
    (path,) = out.glob("sae_flux-*.whl")
    return path


@pytest.mark.slow
def test_wheel_holds_the_organisms_the_type_markers_and_the_license(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"{p}/py.typed" for p in PACKAGES} <= names
    weights = {str(p.relative_to(ROOT)) for package in PACKAGES
               for p in (ROOT / package).rglob("organism/weights/**/*") if p.is_file()}
    assert len(weights) >= 20 and weights <= names  # every organism file, both organisms
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "License-Expression: MIT" in text
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


@pytest.mark.slow
def test_wheel_installs_beside_the_newest_sae_lens_and_nnsight_and_captures(
        wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    try:
        _run(*pip, "--no-index", "--no-deps", TORCH_LOCAL, cwd=tmp_path)
    except AssertionError:
        pass  # no local CPU wheel here: pip resolves torch with the rest
    _run(*pip, wheel, "sae-lens", "nnsight", cwd=tmp_path)

    where = _run(venv / "bin" / "python", "-c", "import sae_flux, itda, cae; print(sae_flux.__file__)",
                 cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(venv)  # the installed copy, not the checkout
    assert "usage: sae-flux demo" in _run(venv / "bin" / "sae-flux", "demo", "--help", cwd=tmp_path)

    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    _run(venv / "bin" / "sae-flux", "cache", "--model", "tiny", "--prompts", "prompts.txt",
         "--hooks", "double.1.img", "--num-inference-steps", "1", "--out", "cache", cwd=tmp_path)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert (manifest["num_prompts"], manifest["widths"]) == (2, {"double.1.img": 32})
    assert manifest["settings"]["generation"]["num_inference_steps"] == 1
    # 2 prompts x 1 step x 64 image tokens (32 x 32 pixels), all in the one complete shard
    assert [(s["prompt_start"], s["prompt_stop"], s["tokens"]) for s in manifest["shards"]] == \
        [(0, 2, {"double.1.img": 128})]
    assert (tmp_path / "cache" / "double.1.img").is_dir()
