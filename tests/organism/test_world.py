"""The scene world: determinism, masks against drawn pixels, token labels, captions."""

from __future__ import annotations

import numpy as np
import pytest

from sae_flux.organism import check_vocabulary, prompts
from sae_flux.organism.world import (
    BACKGROUNDS,
    HELDOUT_TEMPLATES,
    PALETTE,
    TRAIN_TEMPLATES,
    Scene,
    SceneObject,
    World,
)


def test_world_is_deterministic_per_seed_and_differs_across_seeds():
    world = World()
    a, b = world.example(seed=11), world.example(seed=11)
    assert a.scene == b.scene and a.caption == b.caption
    np.testing.assert_array_equal(a.image_HW3, b.image_HW3)
    assert prompts(20, seed=3) == prompts(20, seed=3)
    assert prompts(20, seed=3) != prompts(20, seed=4)


@pytest.mark.parametrize("resolution", [32, 48])
def test_masks_match_drawn_pixels(resolution):
    world = World(resolution=resolution, two_object_rate=0.5)
    for sample in world.examples(60, seed=1):
        image_HW3, masks_OHW = sample.image_HW3, sample.masks_OHW
        assert image_HW3.shape == (resolution, resolution, 3)
        assert not (masks_OHW.sum(0) > 1).any(), "visible masks overlap"
        for obj, mask_HW in zip(sample.scene.objects, masks_OHW, strict=True):
            assert mask_HW.sum() > 0
            assert (image_HW3[mask_HW] == PALETTE[obj.colour]).all()
        background_HW = ~masks_OHW.any(0)
        assert (image_HW3[background_HW] == BACKGROUNDS[sample.scene.background]).all()


def test_later_object_occludes_earlier_one_in_masks():
    world = World()
    first = SceneObject("square", "red", "center", "large")
    second = SceneObject("circle", "blue", "center", "small")
    image_HW3, masks_OHW = world.draw(Scene((first, second)))
    assert masks_OHW[1].sum() == world.object_mask(second).sum()
    assert masks_OHW[0].sum() == (world.object_mask(first) & ~world.object_mask(second)).sum()
    assert (image_HW3[16, 16] == PALETTE["blue"]).all()


def test_token_labels_of_a_planted_square():
    world = World(resolution=32)
    scene = Scene((SceneObject("square", "red", "center", "large"),), background="black")
    labels = world.token_labels(scene)
    frac_hwC = labels.fractions_hwC
    assert frac_hwC.shape == (8, 8, len(labels.concepts))
    # Half side 0.85 * 0.22 * 32 = 5.98 px around 16: pixel rows/cols 10..21 are covered.
    cover_1d = np.array([0, 0, 0.5, 1, 1, 0.5, 0, 0])
    expected_hw = np.outer(cover_1d, cover_1d)
    for concept in ("object", "square", "red", "center", "large"):
        np.testing.assert_allclose(frac_hwC[..., labels.concepts.index(concept)], expected_hw)
    for concept in ("circle", "blue", "left", "small", "background:white"):
        assert frac_hwC[..., labels.concepts.index(concept)].sum() == 0
    np.testing.assert_allclose(
        frac_hwC[..., labels.concepts.index("background:black")], 1 - expected_hw)


def test_token_labels_match_a_naive_pixel_loop():
    world = World(resolution=32, two_object_rate=1.0)
    scene = world.sample(seed=5)
    names, concepts_CHW = world.pixel_concepts(scene)
    labels = world.token_labels(scene)
    for i in range(8):
        for j in range(8):
            for c in range(len(names)):
                block = concepts_CHW[c, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
                assert labels.fractions_hwC[i, j, c] == pytest.approx(block.sum() / 16)


def test_heldout_captions_use_only_heldout_templates():
    starts_heldout = ("a drawing of", "on a")
    assert all(p.startswith(starts_heldout) for p in prompts(50, seed=0, split="heldout"))
    assert not any(p.startswith("a drawing of") for p in prompts(200, seed=0, split="train"))
    assert not set(TRAIN_TEMPLATES) & set(HELDOUT_TEMPLATES)


def test_two_object_captions_mention_both_objects():
    world = World()
    for sample in world.examples(20, seed=2, num_objects=2):
        for obj in sample.scene.objects:
            assert f"{obj.colour} {obj.shape}" in sample.caption


def test_every_caption_is_inside_the_vocabulary():
    texts = prompts(300, seed=9) + prompts(100, seed=9, split="heldout", num_objects=2)
    assert check_vocabulary(texts, strict=True) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"resolution": 30}, "divisible"), ({"two_object_rate": 1.5}, "two_object_rate")],
)
def test_bad_world_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        World(**kwargs)


def test_bad_object_count_is_refused():
    with pytest.raises(ValueError, match="num_objects must be 1 or 2"):
        World().sample(seed=0, num_objects=3)
