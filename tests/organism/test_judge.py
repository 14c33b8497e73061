"""The pixel judge on clean world renders and on bad input."""

from __future__ import annotations

import numpy as np
import pytest

from sae_flux.organism.judge import accuracy, judge, judge_objects
from sae_flux.organism.world import World


def test_judge_reads_every_attribute_of_clean_single_object_renders():
    world = World()
    samples = list(world.examples(120, seed=7, num_objects=1))
    verdicts = [judge(s.image_HW3) for s in samples]
    scores = accuracy(verdicts, [s.scene for s in samples])
    assert scores == {k: 1.0 for k in ("colour", "shape", "position", "size", "background", "found")}
    assert min(v.confidence for v in verdicts) > 0.9


def test_judge_finds_both_objects_of_clean_two_object_renders():
    world = World()
    for sample in world.examples(30, seed=8, num_objects=2):
        found = {(v.colour, v.shape, v.position, v.size) for v in judge_objects(sample.image_HW3)}
        assert found == {(o.colour, o.shape, o.position, o.size) for o in sample.scene.objects}


def test_judge_accepts_float_images_and_survives_mild_noise():
    world = World()
    rng = np.random.default_rng(0)
    samples = list(world.examples(40, seed=3, num_objects=1))
    noisy = [np.clip(s.image_HW3 / 255 + rng.normal(0, 0.05, s.image_HW3.shape), 0, 1)
             for s in samples]
    scores = accuracy([judge(x) for x in noisy], [s.scene for s in samples])
    assert scores["colour"] == 1.0 and scores["position"] == 1.0


def test_judge_reports_none_found_on_an_empty_image():
    verdict = judge(np.zeros((32, 32, 3), dtype=np.uint8))
    assert not verdict.found and verdict.colour is None and verdict.background == "black"


def test_judge_refuses_a_non_rgb_array():
    with pytest.raises(ValueError, match=r"expected an RGB image of shape \(H, W, 3\)"):
        judge(np.zeros((32, 32), dtype=np.uint8))


def test_accuracy_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="as many verdicts as scenes"):
        accuracy([], [World().sample(0)])
