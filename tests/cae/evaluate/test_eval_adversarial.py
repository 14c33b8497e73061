"""The adversarial search equals a brute-force loop over the vocabulary for one inserted
token (whole-vocabulary mode), ranks its shortlist by the one-hot gradient of a hand-written
reference (GCG), costs forward rows that do not depend on the vocabulary, finds a reversal
on a random-weight tiny model where one exists, and refuses bad settings."""

from __future__ import annotations

import pytest
import torch

from cae import SteeringVector
from cae.evaluate.adversarial import (
    AdversarialConfig,
    Search,
    adversarial_search,
    candidate_tokens,
)
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
                                                                  fluency=fluency, top_k=None))
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


def reference_shortlist(hf, tokenizer, sv, m, pair, k):
    """Reference GCG ranking: d(sign(m) * steered propensity)/d(embedding) of the token at
    position 1, through a plain hook adding ``m * v`` at the last position; candidates ranked
    by -(W_E[c] . grad)."""
    item = answer_item(tokenizer, pair)
    ids = torch.tensor([item.prefix_ids[:1] + [7] + item.prefix_ids[1:]])
    embeds = hf.get_input_embeddings()(ids).detach().requires_grad_(True)
    with add_at_last(hf.model.layers[1], m * sv.vectors[1]):
        last = hf(inputs_embeds=embeds).logits[0, -1]
    loss = (1 if m > 0 else -1) * (last[item.matching_id] - last[item.not_matching_id])
    (grad,) = torch.autograd.grad(loss, embeds)
    scores = hf.get_input_embeddings().weight.detach() @ grad[0, 1]
    cands = torch.tensor(candidate_tokens(tokenizer))
    return set(cands[torch.topk(-scores[cands], k).indices].tolist())


@pytest.mark.parametrize("m", [3.0, -2.0])
def test_shortlist_is_the_top_k_of_the_one_hot_gradient(lm, hf_model, tokenizer, m):
    sv = SteeringVector.random(hf_model, [1], seed=3, norm=2.0)
    item = answer_item(tokenizer, ITEMS[0])
    search = Search(lm, sv, AdversarialConfig(m, n_tokens=1, top_k=12))
    ids = torch.tensor(item.prefix_ids[:1] + [7] + item.prefix_ids[1:])
    cands = torch.tensor(candidate_tokens(tokenizer))
    got = set(search.shortlist(item, ids, 1, cands).tolist())
    assert got == reference_shortlist(hf_model, tokenizer, sv, m, ITEMS[0], 12)
    assert search.backward == 1 and all(p.grad is None for p in hf_model.parameters())


@pytest.mark.parametrize("fluency", [0.0, 0.5])
def test_forward_rows_follow_the_shortlist_not_the_vocabulary(lm, hf_model, tokenizer, fluency):
    sv = SteeringVector.random(hf_model, [1], seed=3, norm=0.1)  # nothing reverses early
    cfg = AdversarialConfig(0.1, n_tokens=3, rounds=2, top_k=5, fluency=fluency)
    res = adversarial_search(lm, ITEMS[:2], sv, cfg)
    per = 2 if fluency else 1
    steps = [3 * (2 if not r else 1) for r in res.reversed]  # a reversed item stops after a round
    expected = [4 + s * (per + 5 * per) for s in steps]
    assert res.forward_rows == expected and res.backward_passes == steps
    assert len(tokenizer) > 5 * 8  # the whole vocabulary would cost more than eight times as much


def test_budget_stops_the_search_and_a_budget_too_small_to_run_is_refused(lm, hf_model):
    sv = SteeringVector.random(hf_model, [1], seed=3, norm=0.1)
    res = adversarial_search(lm, ITEMS[:1], sv, AdversarialConfig(0.1, n_tokens=3, top_k=5,
                                                                  budget=20))
    assert res.forward_rows[0] <= 20 and res.backward_passes[0] == 2  # 4 + 2 steps of 6 = 16
    with pytest.raises(ValueError, match="adversarial budget of 9 forward rows per item is too "
                                         "small to run: scoring the item and one search step "
                                         "with top_k=5 need 10"):
        AdversarialConfig(1.0, top_k=5, budget=9)


@pytest.mark.parametrize("kwargs, message", [
    ({"multiplier": 0.0}, "multiplier must be non-zero"),
    ({"multiplier": 1.0, "top_k": 0}, "top_k must be >= 1"),
    ({"multiplier": 1.0, "n_tokens": 0}, "n_tokens, rounds and batch_size must be >= 1"),
    ({"multiplier": 1.0, "fluency": -1.0}, "fluency must be >= 0"),
])
def test_bad_search_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdversarialConfig(**kwargs)
