"""Explanation scores on a planted world: the oracle is the ceiling, shuffled explanations the floor,
distractors that show the concept are no false positives, fuzzing rewards the right region."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from vlm_server import VLMServer

from sae_flux.interp.chat import ChatConfig, OpenAIChat
from sae_flux.interp.explain import VLMInterpreter, distractors, plan
from sae_flux.interp.index import FeatureSource, ImageBatch, IndexConfig, build_index
from sae_flux.interp.oracle import OracleInterpreter, Truth, readable
from sae_flux.interp.score import (
    decoys,
    near_floor,
    score_explanation,
    score_features,
    shuffled,
    summary,
)
from sae_flux.interp.select import SelectConfig
from sae_flux.intervals import bootstrap_mean, wilson

CONCEPTS = ("object", "red", "blue", "background:black")
RED, BLUE = (220, 30, 30), (40, 70, 230)
N_IMAGES = 12


def _object_tokens(image: int) -> np.ndarray:
    """A 2x2-token object whose position moves with the image id (4x4 token grid)."""
    mask = np.zeros((4, 4), dtype=bool)
    row, col = (image // 2) % 3, image % 3
    mask[row:row + 2, col:col + 2] = True
    return mask


def _labels(image: int):
    if not 0 <= image < N_IMAGES:
        raise IndexError(image)
    obj = _object_tokens(image)
    red = image % 2 == 0
    fractions = np.stack([obj, obj & red, obj & (not red), ~obj], axis=-1).astype(float)
    return CONCEPTS, fractions


@pytest.fixture()
def world(tmp_path):
    """Feature 0 fires on red objects, 1 on blue objects, 2 on the background, 3 on every object;
    features 4-9 on objects too, each peaking on its own image (so distractors vary)."""
    acts = torch.zeros(N_IMAGES, 16, 10)
    for i in range(N_IMAGES):
        _, fractions = _labels(i)
        strength = 1.0 + i / 10  # distinct peaks
        acts[i, :, 0] = torch.from_numpy(fractions[..., 1].reshape(-1)) * strength
        acts[i, :, 1] = torch.from_numpy(fractions[..., 2].reshape(-1)) * strength
        acts[i, :, 2] = torch.from_numpy(fractions[..., 3].reshape(-1)) * strength
        acts[i, :, 3] = torch.from_numpy(fractions[..., 0].reshape(-1)) * (2 + i / 10)
        for j in range(6):
            acts[i, :, 4 + j] = torch.from_numpy(fractions[..., 0].reshape(-1)) * (3.0 if i == 2 * j else 0.5)
    source = FeatureSource("planted", "double.0.img", 10, 10, "dictionary")
    index = build_index(IndexConfig(out=str(tmp_path / "idx"), top_n=6), source,
                        iter([ImageBatch(torch.arange(N_IMAGES), acts, (4, 4))]))
    index.images_dir.mkdir()
    for i in range(N_IMAGES):
        pixels = np.zeros((16, 16, 3), dtype=np.uint8)
        pixels[np.kron(_object_tokens(i), np.ones((4, 4), dtype=bool))] = RED if i % 2 == 0 else BLUE
        Image.fromarray(pixels).save(index.image_path(i))
    return index, Truth(_labels)


CFG = SelectConfig(n_images=5, min_tokens=1, threshold=0.2)


def test_truth_reads_the_concepts_an_explanation_names():
    truth = Truth(_labels)
    assert truth.named("red shapes on a black background") == ["red", "background:black"]
    assert truth.named("Blue objects") == ["object", "blue"] and truth.named("a white cat") == []
    assert readable("background:black") == "black background" and truth.named(readable("background:black")) == [
        "background:black"]
    assert truth.shows(0, ["red"]) and not truth.shows(1, ["red"]) and not truth.shows(0, [])


def test_oracle_names_the_planted_concept_of_each_feature(world):
    index, truth = world
    oracle = OracleInterpreter(truth)
    from sae_flux.interp.select import select

    said = [oracle.explain(index, select(index, f, CFG)).pattern for f in range(4)]
    assert said == ["red", "blue", "black background", "object"]


def test_distractors_that_show_the_concept_are_not_false_positives(world):
    index, truth = world
    oracle = OracleInterpreter(truth)
    (planned,) = plan(index, [0], CFG, n_distractors=5)
    red_distractors = [i for i in planned.negatives if i % 2 == 0]
    assert red_distractors, "the planted world draws some red image among feature 0's distractors"
    scored = score_explanation(oracle, index, planned, "red", truth, threshold=0.2)
    share_red = len(red_distractors) / len(planned.negatives)
    assert scored.detection.score == pytest.approx(0.5 * (1 + 1 - share_red))  # capped by prevalence
    assert scored.corrected is not None and scored.corrected.score == 1.0
    assert scored.corrected.dropped == red_distractors
    assert scored.fuzzing is not None and scored.fuzzing.score == 1.0  # own region red, decoy region never


def test_the_oracle_is_the_ceiling_and_shuffled_explanations_the_floor(world, tmp_path):
    index, truth = world
    oracle = OracleInterpreter(truth)
    features = [0, 1, 2, 3]
    plans = plan(index, features, CFG, n_distractors=5)
    own = {f: oracle.explain(index, p.selection).pattern for f, p in zip(features, plans, strict=True)}
    results = score_features(index, oracle, own, plans, truth=truth, out=tmp_path / "s.jsonl")
    rows = {r["explanations"]: r for r in summary(results)}
    assert rows["explanation"]["fuzzing"] == rows["ceiling"]["fuzzing"] == 1.0
    assert rows["floor"]["fuzzing"] < 0.75 and rows["floor"]["detection"] < rows["ceiling"]["detection"]
    assert rows["ceiling"]["detection_low"] <= rows["ceiling"]["detection"] <= rows["ceiling"]["detection_high"]
    assert near_floor(results, "fuzzing") == {}
    wrong = {f: own[shuffled(features)[f]] for f in features}  # every feature explained by another's concept
    flagged = near_floor(score_features(index, oracle, wrong, plans, truth=truth), "fuzzing")
    truthful = {f for f in features if wrong[f] == "object" and f != 2}  # "object" is true of object features
    assert set(flagged) == set(features) - truthful and "within the random floor" in next(iter(flagged.values()))
    again = score_features(index, oracle, own, plans, truth=truth, out=tmp_path / "s.jsonl")  # a rerun continues
    assert [r.record() for r in again] == [r.record() for r in results]


def test_fuzzing_through_the_loopback_vlm_picks_the_highlighted_object(world, tmp_path):
    index, truth = world
    (planned,) = plan(index, [0], CFG, n_distractors=5)
    with VLMServer() as vlm:
        rater = VLMInterpreter(OpenAIChat(ChatConfig(base_url=vlm.url, model="stand-in", cache_dir=None)))
        scored = score_explanation(rater, index, planned, "red shapes", truth, threshold=0.2)
        shuffled_text = score_explanation(rater, index, planned, "blue shapes", truth, threshold=0.2)
    assert scored.fuzzing is not None and scored.fuzzing.true_ratings == [1.0] * len(planned.selection.images)
    assert scored.fuzzing.decoy_ratings == [0.0] * len(planned.selection.images) and scored.fuzzing.score == 1.0
    assert scored.corrected is not None and scored.corrected.score == 1.0
    assert shuffled_text.fuzzing is not None and shuffled_text.fuzzing.score == 0.5
    assert shuffled_text.detection.score < scored.detection.score


def test_decoy_regions_never_overlap_the_highlight():
    regions = torch.zeros(3, 4, 4, dtype=torch.bool)
    regions[0, :2, :2] = True
    regions[1] = True  # everything: no decoy possible
    regions[2, :, :2] = True
    moved = decoys(regions)
    assert not (moved & regions).any()
    assert moved[0, 2:, 2:].all() and moved[0].sum() == 4 and not moved[1].any() and moved[2, :, 2:].all()


def test_distractors_are_drawn_by_firing_frequency(world):
    index, _ = world
    weights = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # only feature 1 may be drawn first
    for seed in range(5):
        assert distractors(index, 0, exclude=[], n=1, seed=seed, candidates=[0, 1, 2, 3, 4, 5],
                           weights=weights) == [int(index.top_images(1)[1][0])]
    common = [0, 0]
    for seed in range(200):  # feature 4 fires 9x as often as feature 6: drawn first ~90% of the time
        first = distractors(index, 0, exclude=[], n=1, seed=seed, candidates=[4, 6], weights=[0.9, 0.1])
        common[first != [int(index.top_images(4)[1][0])]] += 1
    assert 160 <= common[0] <= 195
    assert distractors(index, 0, exclude=[], n=0) == []


def test_wilson_and_bootstrap_intervals():
    assert wilson(4, 4).low == pytest.approx(0.5101, abs=1e-4) and wilson(4, 4).high == 1.0
    assert wilson(0, 10).high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert bootstrap_mean([0.5] * 7) == (0.5, 0.5)
    with pytest.raises(ValueError):
        wilson(5, 4)
