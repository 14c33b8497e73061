"""Ground-truth scoring: a feature planted on a concept mask gets IoU 1 and that concept's name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_flux.interp.dissect import (
    ConceptInterpreter,
    DissectConfig,
    dissect,
    map_iou,
    world_labels,
)
from sae_flux.interp.explain import detection, interpret
from sae_flux.interp.index import FeatureSource, ImageBatch, IndexConfig, build_index
from sae_flux.interp.select import SelectConfig
from sae_flux.organism.world import World, prompts

N_IMAGES = 48


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Feature 0 = token mask of 'red', feature 1 = mask of 'left' x 2, feature 2 = noise."""
    texts = prompts(N_IMAGES, seed=3)
    labels = world_labels(texts, seed=3)
    names, _ = labels(0)
    red, left = list(names).index("red"), list(names).index("left")
    acts = []
    gen = torch.Generator().manual_seed(0)
    for i in range(N_IMAGES):
        fractions_T = torch.from_numpy(labels(i)[1].reshape(64, -1))
        mask = (fractions_T >= 0.5).float()
        acts.append(torch.stack([mask[:, red], 2 * mask[:, left], torch.rand(64, generator=gen)], dim=-1))
    acts_ITD = torch.stack(acts)
    source = FeatureSource("planted", "double.1.img", 3, 3, "dictionary")
    batch = ImageBatch(torch.arange(N_IMAGES), acts_ITD, (8, 8))
    index = build_index(IndexConfig(out=str(tmp_path_factory.mktemp("gt") / "idx"), top_n=8), source, iter([batch]))
    return index, labels, texts


def test_planted_concept_feature_has_iou_one(planted):
    index, labels, _ = planted
    found = dissect(index, labels, DissectConfig(activation_threshold=0.5))
    assert found.best_concept[:2] == ["red", "left"]
    assert found.best_iou[0].item() == pytest.approx(1.0) and found.best_iou[1].item() == pytest.approx(1.0)
    assert found.best_iou[2].item() < 0.6
    summary = found.summary(min_iou=0.9)
    assert summary["live"] == 3 and summary["concepts_covered"] == 2


def test_iou_matches_a_direct_computation_on_the_noise_feature(planted):
    index, labels, _ = planted
    cfg = DissectConfig(activation_threshold=0.5)
    found = dissect(index, labels, cfg)
    col = list(found.concepts).index("background:black")
    maps = index.maps(2, list(range(N_IMAGES)))
    masks = torch.stack([torch.from_numpy(labels(i)[1][..., col] >= 0.5) for i in range(N_IMAGES)])
    assert found.iou_FC[2, col].item() == pytest.approx(map_iou(maps, masks, 0.5), abs=1e-6)


def test_concept_explanation_scores_perfectly_on_its_own_images(planted):
    index, labels, _ = planted
    found = dissect(index, labels, DissectConfig(activation_threshold=0.5))
    interpreter = ConceptInterpreter(found, labels)
    results = interpret(index, interpreter, [0, 1], select_cfg=SelectConfig(min_tokens=1))
    assert [r.explanation.pattern for r in results] == ["red", "left"]
    red = results[0].detection
    assert red.positive_ratings == [1.0] * len(red.positives)
    has_red = [labels(i)[1][..., list(found.concepts).index("red")].max() >= 0.5 for i in red.negatives]
    assert red.score == pytest.approx(0.5 * (1 + 1 - np.mean(has_red)))


def test_detection_score_is_the_papers_formula(planted):
    index, labels, _ = planted

    class Fixed:
        name = "fixed"

        def rate(self, explanation, index, images):
            return [0.8, 0.6, 0.3, 0.1][: len(images)]

    assert detection(Fixed(), index, "x", [0, 1], [2, 3]).score == pytest.approx(0.5 * (0.7 + 1 - 0.2))
    with pytest.raises(ValueError, match="at least one positive and one distractor"):
        detection(Fixed(), index, "x", [0], [])


def test_prompts_that_are_not_world_captions_are_refused():
    with pytest.raises(ValueError, match="is not the scene world's caption"):
        world_labels(["a cat on a mat"], seed=0)
    labels = world_labels(prompts(2, seed=0), seed=0)
    with pytest.raises(IndexError, match="image 5 has no ground truth"):
        labels(5)


def test_world_labels_follow_the_demo_prompt_order():
    texts = prompts(4, seed=7)
    world = World()
    scene = list(world.examples(4, seed=7))[2].scene
    assert np.array_equal(world_labels(texts, seed=7)(2)[1], world.token_labels(scene).fractions_hwC)
