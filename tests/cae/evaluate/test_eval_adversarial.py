"""The adversarial search equals a brute-force loop over the vocabulary for one inserted
token, finds a reversal on a random-weight tiny model where one exists, and refuses bad
settings."""

from __future__ import annotations

import pytest
import torch

from cae import SteeringVector
from cae.evaluate.adversarial import AdversarialConfig, adversarial_search, candidate_tokens
from cae.evaluate.behaviour import BehaviourConfig, answer_item, behaviour
from cae.pairs import Pair
from tests.cae.evaluate.test_eval_behaviour import ITEMS, add_at_last


def brute_force(hf, tokenizer, sv, m, pair, fluency):
    """Reference: every single inserted token after <bos>, one forward each."""
    item = answer_item(tokenizer, pair)
    best = None
    for c in candidate_tokens(tokenizer):
        ids = torch.tensor([item.prefix_ids[:1] + [c] + item.prefix_ids[1:]])
        with torch.no_grad():
            with add_at_last(hf.model.layers[1], m * sv.vectors[1]):
                last = hf(input_ids=ids).logits[0, -1]
            logp = torch.log_softmax(hf(input_ids=ids).logits[0, :-1], -1)
        prop = float(last[item.matching_id] - last[item.not_matching_id])
        ce = float(-logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].mean())
        score = (1 if m > 0 else -1) * prop + fluency * ce
        if best is None or score < best[0]:
            best = (score, c, prop, ce)
    return best


@pytest.mark.parametrize("m, fluency", [(3.0, 0.0), (-3.0, 0.5)])
def test_one_token_search_equals_brute_force_and_reverses_where_possible(
    lm, hf_model, tokenizer, m, fluency
):
    sv = SteeringVector.random(hf_model, [1], seed=3, norm=2.0)
    res = adversarial_search(lm, ITEMS[:2], sv, AdversarialConfig(m, n_tokens=1, rounds=1,
                                                                  fluency=fluency))
    for i, pair in enumerate(ITEMS[:2]):
        _, c, prop, ce = brute_force(hf_model, tokenizer, sv, m, pair, fluency)
        assert res.inserted[i] == tokenizer.decode([c])
        assert res.propensity_after[i] == pytest.approx(prop, abs=1e-4)
        assert res.cross_entropy_after[i] == pytest.approx(ce, abs=1e-4)
        assert res.reversed[i] == ((m > 0) == (prop < 0))
    assert res.success_rate == sum(res.reversed) / 2


def test_search_finds_a_reversal_on_a_random_tiny_model(lm, hf_model):
    sv = SteeringVector.random(hf_model, [1], seed=3, norm=2.0)
    res = adversarial_search(lm, ITEMS, sv, AdversarialConfig(2.0, n_tokens=2, rounds=2))
    assert res.success_rate > 0
    assert all(len(s.split()) == 2 for s in res.inserted)
    # re-score the found texts through the behaviour metrics: the reversals are real
    found = [Pair(text, p.positive, p.negative) for text, p in zip(res.inputs, ITEMS, strict=True)]
    again = behaviour(lm, found, sv, BehaviourConfig([0.0, 2.0]))
    assert [row[1] for row in again.propensity] == pytest.approx(res.propensity_after, abs=1e-3)
    assert [row[1] < 0 for row in again.propensity] == res.reversed


@pytest.mark.parametrize("kwargs, message", [
    ({"multiplier": 0.0}, "multiplier must be non-zero"),
    ({"multiplier": 1.0, "n_tokens": 0}, "n_tokens, rounds and batch_size must be >= 1"),
    ({"multiplier": 1.0, "fluency": -1.0}, "fluency must be >= 0"),
])
def test_bad_search_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdversarialConfig(**kwargs)
