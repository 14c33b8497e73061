"""The shipped organism: offline loading, judged generation quality, and bad-input errors."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from diffusers import FluxPipeline

from sae_flux.organism import (
    OrganismWeightsError,
    VocabularyError,
    check_captions,
    check_vocabulary,
    weights_dir,
)
from sae_flux.organism.evaluate import evaluate_organism, evaluate_pairs

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
    result = evaluate_organism(organism, n=24, seed=123)
    assert result.accuracy["colour"] >= COLOUR_FLOOR, result.accuracy


@pytest.mark.slow
def test_shipped_organism_keeps_its_measured_attribute_accuracy(organism):
    result = evaluate_organism(organism, n=120, seed=321)
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


# -- the caption grammar, and the organism's own call settings ------------------------------------

OFF_GRAMMAR = "a large red circle on the left"  # every training caption names a background


@pytest.fixture(scope="module")
def organism_flux():
    from sae_flux import Flux

    return Flux.organism()


def test_every_world_caption_fills_every_slot_and_off_grammar_ones_are_named():
    from sae_flux.organism.world import World, prompts

    world = World(two_object_rate=0.5)
    captions = prompts(200, seed=4, world=world) + prompts(100, seed=5, split="heldout", world=world)
    assert check_captions(captions) == {}
    assert check_captions([OFF_GRAMMAR, "a red dog"]) == {
        OFF_GRAMMAR: ["no background"],
        "a red dog": ["no size", "no shape", "no position", "no background", "unknown words 'dog'"],
    }


def test_organism_generation_and_capture_warn_once_per_call_naming_the_caption(organism_flux, caplog):
    good = "a small blue square at the top on a white background"

    def warnings() -> list[str]:
        found = [r.getMessage() for r in caplog.records if r.name == "sae_flux.organism.weights"]
        caplog.clear()
        return found

    with caplog.at_level(logging.WARNING):
        organism_flux.generate([OFF_GRAMMAR, good, OFF_GRAMMAR], num_inference_steps=1)
        generated = warnings()
        organism_flux.capture([OFF_GRAMMAR, "a red dog"], ["double.0.img"], num_inference_steps=1)
        captured = warnings()
        organism_flux.generate([good], num_inference_steps=1)
        assert warnings() == []
    assert len(generated) == 1 and len(captured) == 1
    assert generated[0].startswith(f"1 of 2 captions are off the Flux organism's caption grammar and give broken "
                                   f"images: '{OFF_GRAMMAR}' (no background)")
    assert f"'{OFF_GRAMMAR}' (no background); 'a red dog' (no size, no shape" in captured[0]


def test_a_plain_pipeline_call_on_the_organism_gives_the_image_of_generate(organism_flux, tmp_path):
    caption = "a large green triangle at the right on a black background"
    expected = organism_flux.generate([caption], seed=5)
    pipe = organism_flux.pipeline
    plain = pipe(caption, generator=torch.Generator().manual_seed(5), output_type="pt").images
    assert plain.shape == (1, 3, 32, 32)
    assert torch.equal(plain, expected)
    fewer = pipe(caption, generator=torch.Generator().manual_seed(5), output_type="pt", num_inference_steps=2).images
    assert not torch.equal(fewer, expected), "an explicit setting wins over the organism's own"
    pipe.save_pretrained(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    assert json.loads((tmp_path / "copy" / "sae_flux.json").read_text())["num_inference_steps"] == 8
    reloaded = FluxPipeline.from_pretrained(tmp_path / "copy")  # plain diffusers still loads the copy
    assert type(reloaded) is FluxPipeline
