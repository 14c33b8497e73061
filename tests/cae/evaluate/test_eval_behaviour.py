"""Behaviour metrics equal values computed by hand from the HF model's logits with a plain
forward hook doing the addition at the answer-predicting position."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from cae import SteeringVector
from cae.evaluate.behaviour import (
    BehaviourConfig,
    answer_item,
    behaviour,
    layer_sweep,
    least_squares_slopes,
)
from cae.pairs import Pair

ITEMS = [
    Pair("question : your friend is sad . choices : ( A ) i help them ( B ) i ignore them "
         "answer :", " ( A )", " ( B )"),
    Pair("question : your child is lost . answer :", " ( B )", " ( A )"),
    Pair("question : the mayor offers you a chance to rule the town . choices : ( A ) yes i "
         "take it ( B ) no i decline answer :", " ( B )", " ( A )"),
    Pair("q : your guest is cold . i pick option", " 1", " 2"),
]


@contextmanager
def add_at_last(block, vec_D):
    """Reference steering: add ``vec_D`` at the last position of the block's output."""
    def hook(_m, _i, out):
        out = out.clone()
        out[:, -1] += vec_D
        return out
    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def reference(hf, tokenizer, pair, sv=None, layer=1, m=0.0):
    """(p(matching)/(p(A)+p(B)), logit difference) from one unbatched forward."""
    answer = pair.positive.split()[1] if "(" in pair.positive else pair.positive.strip()
    other = pair.negative.split()[1] if "(" in pair.negative else pair.negative.strip()
    prefix = pair.prompt + (" (" if "(" in pair.positive else "")
    ids = tokenizer(prefix, return_tensors="pt")["input_ids"]
    a, b = tokenizer.convert_tokens_to_ids([answer, other])
    vec = torch.zeros(hf.config.hidden_size) if sv is None else m * sv.vectors[layer]
    with torch.no_grad(), add_at_last(hf.model.layers[layer], vec):
        logits = hf(input_ids=ids).logits[0, -1]
    p = torch.softmax(logits[[a, b]], -1)[0]
    return float(p), float(logits[a] - logits[b])


def test_answer_token_is_the_first_differing_token(tokenizer):
    item = answer_item(tokenizer, ITEMS[0])
    assert tokenizer.convert_ids_to_tokens(item.prefix_ids)[-3:] == ["answer", ":", "("]
    assert tokenizer.convert_ids_to_tokens([item.matching_id, item.not_matching_id]) == ["A", "B"]


def test_identical_completions_cannot_be_scored(tokenizer):
    with pytest.raises(ValueError, match=r"item 0: completions ' \( A \)' and ' \( A \)' do not differ"):
        answer_item(tokenizer, Pair("answer :", " ( A )", " ( A )"))


def test_unsteered_p_matching_equals_softmax_of_the_two_answer_logits(lm, hf_model, tokenizer):
    res = behaviour(lm, ITEMS, None, BehaviourConfig([0.0, 1.0]))
    for i, pair in enumerate(ITEMS):
        p, diff = reference(hf_model, tokenizer, pair)
        assert res.p_matching[i][0] == pytest.approx(p, abs=1e-5)
        assert res.propensity[i][0] == pytest.approx(diff, abs=1e-4)
    assert res.mean_p_matching[0] == pytest.approx(
        sum(reference(hf_model, tokenizer, p)[0] for p in ITEMS) / len(ITEMS), abs=1e-5)


def test_steered_propensity_slope_and_anti_steerable_fraction_match_hand_values(
    lm, hf_model, tokenizer
):
    sv = SteeringVector.random(hf_model, [1], seed=3, norm=4.0)
    ms = [-2.0, 0.0, 1.0, 3.0]
    res = behaviour(lm, ITEMS, sv, BehaviourConfig(ms))
    ref = [[reference(hf_model, tokenizer, p, sv, 1, m)[1] for m in ms] for p in ITEMS]
    torch.testing.assert_close(torch.tensor(res.propensity), torch.tensor(ref), atol=1e-4,
                               rtol=1e-4)
    mbar = sum(ms) / len(ms)
    slopes = [sum((m - mbar) * (y - sum(row) / len(row)) for m, y in zip(ms, row, strict=True))
              / sum((m - mbar) ** 2 for m in ms) for row in ref]
    assert res.slopes == pytest.approx(slopes, abs=1e-4)
    assert res.steerability == pytest.approx(sum(slopes) / len(slopes), abs=1e-4)
    assert res.anti_steerable_fraction == sum(s < 0 for s in slopes) / len(slopes)


def test_least_squares_slope_of_a_line_is_its_gradient():
    ms = torch.tensor([-1.0, 0.0, 2.0])
    y = torch.stack([3 * ms + 1, -0.5 * ms])
    assert least_squares_slopes(ms, y).tolist() == pytest.approx([3.0, -0.5])


def test_layer_sweep_ranks_layers_by_absolute_steerability(lm, hf_model):
    sv = SteeringVector.random(hf_model, [0, 1, 2], seed=5, norm=4.0)
    sweep = layer_sweep(lm, ITEMS, sv, BehaviourConfig([-1.0, 1.0]))
    scores = [r.steerability for r in sweep.results]
    assert sweep.layers == [0, 1, 2]
    assert sweep.ranking == sorted([0, 1, 2], key=lambda layer: -abs(scores[layer]))
    assert sweep.best_layer == sweep.ranking[0]
    assert sweep.anti_steerable_layers == [layer for layer in (0, 1, 2) if scores[layer] < 0]


def test_an_anti_steerable_chosen_layer_is_reported_and_warned_about(lm, hf_model, caplog):
    sv = SteeringVector.random(hf_model, [0, 1, 2], seed=5, norm=4.0)
    up = layer_sweep(lm, ITEMS, sv, BehaviourConfig([-1.0, 1.0]))
    down = layer_sweep(lm, ITEMS, -sv, BehaviourConfig([-1.0, 1.0]))  # every sign reversed
    assert down.best_layer == up.best_layer
    assert sorted(up.anti_steerable_layers + down.anti_steerable_layers) == [0, 1, 2]
    flipped = down if down.best_layer in down.anti_steerable_layers else up
    assert flipped.reversed and "is anti-steerable: adding the vector lowers" in flipped.warnings[0]
    assert "anti-steerable" in caplog.text


@pytest.mark.parametrize("ms, message", [
    ([1.0, 1.0], "at least two distinct multipliers"),
    ([0.0, float("nan")], "multiplier must be a finite number"),
])
def test_bad_multipliers_are_refused(ms, message):
    with pytest.raises(ValueError, match=message):
        BehaviourConfig(ms)


def test_bad_positions_are_refused():
    with pytest.raises(ValueError, match="unknown positions 'middle'"):
        BehaviourConfig([0.0, 1.0], positions="middle")
