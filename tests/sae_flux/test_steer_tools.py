"""The steering CLI grid, concept matching and the demo's steering section, on the tiny Flux."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from sae_flux.cli import main
from sae_flux.report import Report
from sae_flux.steering.concepts import (
    ConceptTokens,
    best_features,
    correlations,
    difference_of_means,
)
from sae_flux.steering.grid import SteerConfig, run_steer
from sae_flux.steering.measure import clean_fraction, outside_change, targets

HOOK = "double.1.img"


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=64, k=4, metadata=SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        sae.W_dec.normal_()
        sae.W_enc.normal_()
    path = tmp_path_factory.mktemp("sae") / "sae"
    sae.save_model(path)
    return path


def test_steer_grid_has_a_row_per_prompt_and_a_column_per_scale(tiny_flux, sae_dir, tmp_path):
    cfg = SteerConfig(dictionary=str(sae_dir), features=[3, 9], prompts=["a red circle", "a blue square"],
                      scales=[0.0, 1.0, 4.0], out=str(tmp_path / "grid.png"), cell=32, region=[0, 0, 4, 8])
    path = run_steer(cfg, flux=tiny_flux)
    assert Image.open(path).size == (3 * 32, 14 + 2 * 32)
    assert json.loads(path.with_suffix(".json").read_text())["features"] == [3, 9]


def test_steer_command_reports_a_feature_beyond_the_dictionary(sae_dir, tmp_path, capsys):
    code = main(["steer", "--model", "tiny", "--dictionary", str(sae_dir), "--features", "64",
                 "--prompts", "a red circle", "--out", str(tmp_path / "g.png")])
    assert code == 2
    assert "feature 64 is beyond the dictionary (d_sae=64" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_steer_config_refuses_nan_scales_and_unknown_modes(sae_dir):
    with pytest.raises(ValueError, match=r"scales must be finite numbers, got \[nan\]"):
        SteerConfig(dictionary=str(sae_dir), features=[0], prompts=["x"], scales=[0.0, float("nan")])
    with pytest.raises(ValueError, match="mode 'push' is not one of"):
        SteerConfig(dictionary=str(sae_dir), features=[0], prompts=["x"], mode="push")


def test_steer_refuses_a_directory_without_a_dictionary(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a SAELens dictionary directory"):
        run_steer(SteerConfig(dictionary=str(tmp_path), features=[0], prompts=["x"]))


def test_best_feature_is_the_one_tracking_the_concept_mask():
    labels = torch.rand(500, 3)
    latents = torch.randn(500, 10)
    latents[:, 7] = 2 * labels[:, 1] + 0.01 * torch.randn(500)
    corr = correlations(latents, labels)
    assert corr.shape == (10, 3)
    assert int(corr[:, 1].argmax()) == 7 and corr[7, 1] > 0.99

    class Identity:
        W_dec = torch.zeros(1)

        def encode(self, x):
            return x

    data = ConceptTokens(latents, labels, ("object", "red", "circle"))
    assert best_features(Identity(), data, ("red",))["red"].feature == 7


def test_difference_of_means_contrasts_concept_tokens_with_other_object_tokens():
    acts = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [9.0, 9.0]])
    labels = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 0], [0, 0]], dtype=torch.float32)
    data = ConceptTokens(acts, labels, ("object", "red"))
    torch.testing.assert_close(difference_of_means(data, "red"), torch.tensor([2.0, -3.0]))
    with pytest.raises(ValueError, match="no tokens show 'red'"):
        difference_of_means(ConceptTokens(acts, torch.zeros(5, 2), ("object", "red")), "red")


def test_targets_never_mention_the_concept_and_cover_the_object():
    t = targets("red", 6, seed=0)
    assert len(t.samples) == 6 and t.region_Bhw.shape == (6, 8, 8)
    assert all("red" not in s.caption and s.scene.main.colour != "red" for s in t.samples)
    assert t.region_Bhw.flatten(1).any(1).all()


def test_outside_change_ignores_the_region_and_clean_fraction_counts_palette_pixels():
    base = torch.zeros(1, 3, 32, 32)
    steered = base.clone()
    steered[:, :, :4, :4] = 1.0
    region = torch.zeros(1, 8, 8, dtype=torch.bool)
    region[0, 0, 0] = True
    assert float(outside_change(steered, base, region)) == 0.0
    assert float(outside_change(steered, base, ~region)) > 0
    grey = torch.full((1, 3, 32, 32), 0.5)
    assert float(clean_fraction(base)) == 1.0 and float(clean_fraction(grey)) == 0.0


def test_demo_stage_adds_a_steering_section(tiny_flux, sae_dir, tmp_path):
    from sae_flux.cache import CacheConfig, write_cache
    from sae_flux.demo import DemoConfig, DemoState
    from sae_flux.organism.world import prompts
    from sae_flux.steering.stage import stage_steering

    texts = prompts(16, seed=0)
    (tmp_path / "prompts.txt").write_text("\n".join(texts) + "\n")
    write_cache(CacheConfig(model="tiny", prompts=str(tmp_path / "prompts.txt"), hooks=[HOOK],
                            out=str(tmp_path / "cache"), steps=[0], batch_size=16, shard_prompts=16), flux=tiny_flux)
    state = DemoState(DemoConfig(out=str(tmp_path), n_prompts=16), tmp_path,
                      Report(tmp_path), flux=tiny_flux, hook=HOOK, prompts=texts, cache=tmp_path / "cache",
                      dictionaries={"sae": sae_dir})
    stage_steering(state)
    section = state.report.sections[-1]
    assert section.title == "Steering"
    methods = {row["method"] for row in state.report.numbers["steering"]}
    assert methods == {"none", "sae", "diff-of-means"}
    assert all((tmp_path / f.path).is_file() for f in section.figures)
    assert all(r["hit_low"] <= r["hit"] <= r["hit_high"] and r["images"] >= 1 for r in state.report.numbers["steering"])
    assert section.conclusion.startswith("toward 'red' the best direction")
