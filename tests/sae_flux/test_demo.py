"""The main job end to end on the shipped organism, at a reduced setting."""

from __future__ import annotations

import json

import pytest
import torch

from sae_flux.cli import main as cli_main
from sae_flux.demo import SAE_EPOCHS, DemoConfig, DemoSizes, run_demo


def test_demo_runs_every_stage_and_writes_a_report(tmp_path):
    out = tmp_path / "demo"
    cfg = DemoConfig(out=str(out), n_prompts=32, sae_tokens=8192, sae_expansion=2, itda_l0=4)
    threads = torch.get_num_threads()
    index = run_demo(cfg)
    assert index == out / "index.html"
    assert torch.get_num_threads() == threads, "the demo's thread setting is restored"
    numbers = json.loads((out / "report.json").read_text())
    assert set(numbers["stage_seconds"]) == {"prompts", "cache", "itda", "sae", "metrics", "interp", "steering"}
    rows = {row["dictionary"]: row for row in numbers["reconstruction"]}
    assert set(rows) == {"itda", "sae-topk"}
    assert all(0.0 <= row["fvu"] < 1.5 and row["tokens"] == 64 * 64 for row in rows.values())
    assert numbers["cache"]["tokens"] == 32 * 64 == numbers["sizes"]["cache_tokens"]
    assert numbers["sizes"]["sae_tokens"] == 8192 and numbers["sizes"]["sae_latents"] == 2 * 128
    page = index.read_text()
    for title in ("Sizes", "Activation cache", "Reconstruction", "Steering"):
        assert title in page
    assert (out / "interp" / "browser.html").is_file()
    units = {row["units"]: row for row in numbers["interp"]}  # the calibrated table: floors and ceiling beside each set
    assert {"sae-topk", "itda", "neurons", "probe-double.1.img", "probe-double.1.mlp", "random-512"} <= set(units)
    assert {"random-rate-256 (sae-topk)", "random-256"} <= set(units)
    assert all(" [" in row["AP (factor concepts)"] for row in units.values())  # every score has its interval
    assert "random floor" in page and "a linear probe per concept reaches" in page


def test_demo_refuses_an_existing_output_directory(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    with pytest.raises(FileExistsError, match="exists; pass --overwrite"):
        run_demo(DemoConfig(out=str(tmp_path / "demo")))
    assert cli_main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err


def test_demo_config_rejects_too_few_prompts():
    with pytest.raises(ValueError, match="n_prompts must be >= 8"):
        DemoConfig(n_prompts=4)


def test_n_prompts_sizes_the_cache_the_sae_and_its_passes():
    quick = DemoSizes.of(DemoConfig(n_prompts=128), tokens_per_image=64, d_model=128)
    assert quick == DemoSizes(prompts=128, heldout_prompts=64, cache_tokens=8192, sae_latents=256, sae_batch=1024,
                              sae_tokens=SAE_EPOCHS * 8192, sae_window_tokens=8192, samples=2)
    default = DemoSizes.of(DemoConfig(), tokens_per_image=64, d_model=128)
    assert (default.cache_tokens, default.sae_latents, default.sae_tokens, default.heldout_prompts, default.samples) == (
        65_536, 1024, SAE_EPOCHS * 65_536, 128, 4)
    smallest = DemoSizes.of(DemoConfig(n_prompts=8), tokens_per_image=64, d_model=128)
    assert (smallest.cache_tokens, smallest.sae_batch, smallest.sae_latents) == (512, 64, 256)
    chosen = DemoSizes.of(DemoConfig(n_prompts=128, sae_expansion=4, sae_tokens=50_000), 64, 128)
    assert (chosen.sae_latents, chosen.sae_tokens) == (512, 50_000)
    assert "128 prompts -> 8,192 cache tokens" in quick.describe() and "16.0 passes" in quick.describe()
