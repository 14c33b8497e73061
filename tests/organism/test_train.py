"""The training script on a reduced config: it runs, its losses fall, and its output loads."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from _sae_flux_cliargs import add_dataclass_arguments, dataclass_from_args
from sae_flux.organism import check_weights
from sae_flux.organism.train import (
    DecoderStage,
    FlowStage,
    ModelSize,
    OrganismTrainConfig,
    VAEStage,
    main,
    train,
)

SMALL = ModelSize(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=16,
                  axes_dims_rope=(4, 4, 8), text_dim=32, text_layers=1, vae_channels=(8, 16))


def small_config(out, steps: int = 60) -> OrganismTrainConfig:
    return OrganismTrainConfig(
        out=out, num_scenes=64, resolution=16, threads=1, model=SMALL,
        vae=VAEStage(steps=steps, batch_size=8, warmup=5),
        flow=FlowStage(steps=steps, batch_size=8, warmup=5, lr=2e-3, checkpoint_every=0),
        decoder=DecoderStage(steps=steps // 2, batch_size=8, warmup=2),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train(small_config(tmp_path_factory.mktemp("organism")))


def test_losses_fall_in_every_stage(trained):
    assert np.mean(trained.vae_losses[-10:]) < 0.85 * np.mean(trained.vae_losses[:10])
    assert np.mean(trained.flow_losses[-10:]) < np.mean(trained.flow_losses[:10])
    assert np.mean(trained.decoder_losses[-5:]) < np.mean(trained.decoder_losses[:5])


def test_saved_organism_verifies_loads_and_keeps_latent_statistics(trained):
    out = check_weights(trained.out)
    saved = json.loads((out / "vae" / "config.json").read_text())
    assert saved["shift_factor"] != 0.0 and saved["scaling_factor"] != 1.0
    pipe = FluxPipeline.from_pretrained(out)
    assert pipe.vae.config.shift_factor == pytest.approx(saved["shift_factor"])
    image = pipe("a small red circle at the left on a black background", height=16, width=16,
                 num_inference_steps=2, guidance_scale=0.0, max_sequence_length=24,
                 output_type="np").images[0]
    assert image.shape == (16, 16, 3) and np.isfinite(image).all()
    recorded = json.loads((out / "train_config.json").read_text())
    assert recorded["flow"]["steps"] == 60 and recorded["model"]["num_layers"] == 1


def test_training_is_deterministic(tmp_path):
    a = train(small_config(tmp_path / "a", steps=3))
    b = train(small_config(tmp_path / "b", steps=3))
    assert a.vae_losses == b.vae_losses and a.flow_losses == b.flow_losses
    wa = FluxPipeline.from_pretrained(a.out).transformer.state_dict()
    wb = FluxPipeline.from_pretrained(b.out).transformer.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_command_line_sets_nested_fields(tmp_path):
    argv = ["--out", str(tmp_path / "cli"), "--num-scenes", "16", "--resolution", "16",
            "--threads", "1", "--vae.steps", "1", "--vae.batch-size", "4",
            "--flow.steps", "1", "--flow.batch-size", "4", "--checkpoint-every", "0",
            "--decoder.steps", "1", "--decoder.batch-size", "4",
            "--num-layers", "1", "--num-single-layers", "1",
            "--num-attention-heads", "2", "--attention-head-dim", "16",
            "--axes-dims-rope", "4", "4", "8", "--text-dim", "32",
            "--vae-channels", "8", "16"]
    assert main(argv) == 0
    saved = tmp_path / "cli" / "train_config.json"
    recorded = json.loads(saved.read_text())
    assert recorded["model"]["axes_dims_rope"] == [4, 4, 8] and recorded["num_scenes"] == 16
    # the saved record read back through --config-path is the run's config
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, OrganismTrainConfig)
    expected = dataclass_from_args(OrganismTrainConfig, parser.parse_args(argv))
    assert dataclass_from_args(OrganismTrainConfig, parser.parse_args(["--config-path", str(saved)])) == expected


def test_bad_training_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="num_scenes must be >= 1"):
        OrganismTrainConfig(out=tmp_path, num_scenes=0)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        OrganismTrainConfig(out=tmp_path, threads=0)


def test_training_continues_from_a_saved_organism_keeping_its_vae(trained, tmp_path):
    cfg = small_config(tmp_path / "more", steps=3)
    cfg.init_from, cfg.vae.steps, cfg.decoder.steps = str(trained.out), 0, 0
    more = train(cfg)
    assert more.vae_losses == [] and len(more.flow_losses) == 3
    before = FluxPipeline.from_pretrained(trained.out).vae.state_dict()
    after = FluxPipeline.from_pretrained(more.out).vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert more.flow_losses[0] < trained.flow_losses[0]


def test_continuing_from_a_mismatched_organism_is_refused(trained, tmp_path):
    cfg = small_config(tmp_path / "bad", steps=1)
    cfg.init_from, cfg.model.num_layers = str(trained.out), 2
    with pytest.raises(ValueError, match="has 1 double blocks but the config asks for 2"):
        train(cfg)
