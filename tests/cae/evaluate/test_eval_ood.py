"""The OOD reader reads the CAE paper's files as published and refuses other formats; the
in- vs out-of-distribution table equals the behaviour metrics and a hand-run judge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cae import SteeringVector
from cae.evaluate.behaviour import BehaviourConfig, behaviour
from cae.evaluate.ood import load_ood_dir, load_ood_file
from cae.evaluate.shift import continuations, distribution_shift, mean_ci
from tests.cae.evaluate.test_eval_behaviour import ITEMS

PUBLISHED = Path("/work/shared/data/cae-ood")


@pytest.mark.skipif(not PUBLISHED.is_dir(), reason="published OOD sets not present")
def test_every_published_file_reads_with_its_kind_group_and_length():
    sets = load_ood_dir(PUBLISHED)
    assert len(sets) == 63 and all(len(s.prompts) == 10 for s in sets)
    assert {s.kind for s in sets} == {"choice-qa", "open-ended"}
    assert {s.group for s in sets} == {"practical", "safety"}
    one = load_ood_file(PUBLISHED / "open-ended/safety/corrigible-neutral-HHH-neutral-HHH-medium.json")
    assert (one.behaviour, one.length) == ("corrigible-neutral-HHH-neutral-HHH", "medium")


def write(tmp_path, name, payload):
    path = tmp_path / "open-ended" / "safety" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def test_criteria_rubric_is_kept(tmp_path):
    s = load_ood_file(write(tmp_path, "refusal-long.json",
                            [{"id": 1, "prompt": "Hi?", "criteria": "Check tone."}]))
    assert (s.kind, s.group, s.behaviour, s.length) == ("open-ended", "safety", "refusal", "long")
    assert s.prompts[0].criteria == "Check tone."


@pytest.mark.parametrize("name, payload, message", [
    ("refusal-huge.json", [{"id": 1, "prompt": "x"}], "unknown OOD format: expected a"),
    ("refusal-long.json", {"id": 1, "prompt": "x"}, "expected a non-empty JSON list"),
    ("refusal-long.json", [{"id": 1, "text": "x"}], r"unknown OOD format: keys \['id', 'text'\]"),
    ("refusal-long.json", ["just a string"], "expected an object with 'id' and 'prompt'"),
    ("refusal-long.json", "[{", "malformed JSON"),
])
def test_unknown_ood_formats_are_refused_with_the_file_named(tmp_path, name, payload, message):
    path = write(tmp_path, name, payload)
    with pytest.raises(ValueError, match=message) as err:
        load_ood_file(path)
    assert name in str(err.value)


def test_missing_ood_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="OOD directory not found"):
        load_ood_dir(tmp_path / "nope")
    with pytest.raises(ValueError, match="no OOD prompt files"):
        load_ood_dir(tmp_path)


def test_mean_ci_is_the_normal_interval():
    mean, (lo, hi) = mean_ci([1.0, 2.0, 3.0, 6.0])
    sd = math.sqrt(((1 - 3) ** 2 + 1 + 0 + 9) / 3)
    assert mean == 3.0 and hi - mean == pytest.approx(1.959964 * sd / 2, rel=1e-6)
    assert mean_ci([2.0]) == (2.0, (2.0, 2.0))


def test_shift_rows_equal_behaviour_metrics_and_the_judge(lm, hf_model):
    sv = SteeringVector.random(hf_model, [1], seed=3, norm=4.0)
    ref = behaviour(lm, ITEMS, sv, BehaviourConfig([0.0, 2.0]))
    prompts = ["story : your friend is sad . so", "story : the mayor offers you a chance ."]

    def judge(_prompt, completion):
        return float("help" in completion) - float("ignore" in completion)

    rows = distribution_shift(lm, sv, 2.0, {"ab": ITEMS}, {"open": prompts}, judge)
    ab, opened = rows
    diffs = [r[1] - r[0] for r in ref.p_matching]
    assert ab.effect == pytest.approx(sum(diffs) / len(diffs), abs=1e-6)
    assert ab.unsteered == pytest.approx(ref.mean_p_matching[0], abs=1e-6)
    steered = continuations(lm, prompts, sv, 2.0)
    assert opened.steered == sum(judge(p, c) for p, c in zip(prompts, steered, strict=True)) / 2
    with pytest.raises(ValueError, match="open-ended sets need a judge"):
        distribution_shift(lm, sv, 2.0, {}, {"open": prompts})


@pytest.mark.parametrize("rule", ["all", "from_prompt_end", "generated"])
def test_batched_continuations_equal_one_prompt_at_a_time(lm, hf_model, rule):
    sv = SteeringVector.random(hf_model, [1], seed=3, norm=4.0)
    prompts = ["story : your friend is sad . so", "story : a king offers you a chance to "
               "rule the town . so", "q : your guest is cold ."]
    batched = continuations(lm, prompts, sv, 2.0, max_new_tokens=5, positions=rule)
    assert batched == [continuations(lm, [p], sv, 2.0, max_new_tokens=5, positions=rule)[0]
                       for p in prompts]
