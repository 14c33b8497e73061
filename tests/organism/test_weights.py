"""The shipped organism: offline loading, judged generation quality, and bad-input errors."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from diffusers import FluxPipeline

from sae_flux.organism import (
    OrganismWeightsError,
    VocabularyError,
    check_vocabulary,
    weights_dir,
)
from sae_flux.organism.evaluate import evaluate, evaluate_pairs

#: Judged colour accuracy the shipped organism must reach on 24 held-out captions. Measured:
#: 0.99 on 240 held-out captions (docs/bench/organism.md); the floor leaves room for sampling noise.
COLOUR_FLOOR = 0.85
#: Regression floors for the slow tier on 120 held-out captions, set below the measured
#: accuracies (colour 0.99, shape 0.93, position 1.0, size 1.0 on 240) and at the issue's goals
#: (colour/position 0.95, size 0.90, shape 0.85).
FLOORS = {"colour": 0.95, "position": 0.95, "size": 0.90, "shape": 0.85}

@pytest.fixture(scope="module")
def organism():
    torch.set_num_threads(2)
    return FluxPipeline.from_pretrained(weights_dir())


def test_shipped_organism_is_small_and_loads_offline(organism, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = FluxPipeline.from_pretrained(weights_dir())
    assert pipe.transformer.config.num_layers == organism.transformer.config.num_layers
    size = sum(p.stat().st_size for p in weights_dir().rglob("*") if p.is_file())
    assert size < 25 * 2**20


@pytest.mark.parametrize("component", ["text_encoder", "text_encoder_2"])
def test_every_shipped_text_encoder_weight_loads_into_its_module(component):
    """An incompatible transformers renames the keys and silently starts from random weights."""
    from transformers import CLIPTextModel, T5EncoderModel

    cls = {"text_encoder": CLIPTextModel, "text_encoder_2": T5EncoderModel}[component]
    _, info = cls.from_pretrained(weights_dir() / component, output_loading_info=True)
    assert (sorted(info["missing_keys"]), sorted(info["unexpected_keys"])) == ([], [])


def test_shipped_organism_draws_the_named_colour_on_heldout_captions(organism):
    result = evaluate(organism, n=24, seed=123)
    assert result.accuracy["colour"] >= COLOUR_FLOOR, result.accuracy


@pytest.mark.slow
def test_shipped_organism_keeps_its_measured_attribute_accuracy(organism):
    result = evaluate(organism, n=120, seed=321)
    for attribute, floor in FLOORS.items():
        assert result.accuracy[attribute] >= floor, result.accuracy


@pytest.fixture
def copied_weights(tmp_path):
    return shutil.copytree(weights_dir(), tmp_path / "weights")


def test_missing_weight_file_is_named_with_how_to_retrain(copied_weights):
    (copied_weights / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(OrganismWeightsError,
                       match=r"missing: .*transformer/diffusion_pytorch_model\.safetensors.*"
                             r"python -m sae_flux\.organism\.train"):
        weights_dir(copied_weights)


def test_corrupt_weight_file_is_named_with_how_to_retrain(copied_weights):
    path = copied_weights / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(OrganismWeightsError,
                       match=r"corrupt .*vae/diffusion_pytorch_model\.safetensors.*"
                             r"python -m sae_flux\.organism\.train"):
        weights_dir(copied_weights)


def test_missing_manifest_or_directory_is_reported(copied_weights, tmp_path):
    (copied_weights / "organism-manifest.json").unlink()
    with pytest.raises(OrganismWeightsError, match="organism-manifest.json not found"):
        weights_dir(copied_weights)
    with pytest.raises(FileNotFoundError, match="retrain"):
        weights_dir(tmp_path / "nowhere")


def test_out_of_vocabulary_words_are_named_in_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="sae_flux.organism.weights"):
        unknown = check_vocabulary(["a red dog at the left", "a Blue cat on mars"])
    assert unknown == ["dog", "cat", "mars"]
    assert "'dog', 'cat', 'mars'" in caplog.text


def test_out_of_vocabulary_words_raise_when_strict():
    with pytest.raises(VocabularyError, match="'zebra'"):
        check_vocabulary("a small zebra at the top", strict=True)
    assert check_vocabulary("A SMALL RED CIRCLE at the top , on black", strict=True) == []


def test_evaluate_pairs_refuses_an_empty_request():
    with pytest.raises(ValueError, match="n must be >= 1 two-object captions, got 0"):
        evaluate_pairs(None, n=0)  # type: ignore[arg-type]  # refused before the pipeline is used
