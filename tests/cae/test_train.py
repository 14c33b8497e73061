"""Training equals a direct computation from ``output_hidden_states`` on a random tiny Llama."""

from __future__ import annotations

import pytest
import torch

from cae import SteeringVector
from cae.aggregators import logistic, mean_diff, pca
from cae.pairs import Pair

# Answer-letter position counted from the end of each completion of the conftest pairs:
# " ( A )" -> "A" is 2nd from the end, " i step aside ." -> "aside", " yes" / " 1" -> last.
ANSWER_FROM_END = [2, 2, 2, 1, 1]


def direct_reads(hf, tokenizer, pairs, layer, rule):
    """Reference: one unpadded forward per text, hidden_states[layer + 1] at the rule's tokens."""
    pos, neg = [], []
    for i, pair in enumerate(pairs):
        n_prompt = len(tokenizer(pair.prompt)["input_ids"])
        for completion, out in ((pair.positive, pos), (pair.negative, neg)):
            ids = tokenizer(pair.prompt + completion, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                hidden_TD = hf(ids, output_hidden_states=True).hidden_states[layer + 1][0]
            if rule == "answer":
                out.append(hidden_TD[-ANSWER_FROM_END[i]])
            elif rule == "last":
                out.append(hidden_TD[-1])
            else:
                out.append(hidden_TD[n_prompt:].mean(0))
    return torch.stack(pos), torch.stack(neg)


@pytest.mark.parametrize("rule", ["answer", "last", "mean"])
def test_vector_equals_mean_difference_of_hidden_states(lm, hf_model, tokenizer, pairs, rule):
    sv = SteeringVector.train(lm, pairs, layers=[1, 2], read=rule)
    for layer in (1, 2):
        pos_ND, neg_ND = direct_reads(hf_model, tokenizer, pairs, layer, rule)
        torch.testing.assert_close(sv.vectors[layer], (pos_ND - neg_ND).mean(0),
                                   atol=1e-5, rtol=1e-5)
    assert sv.meta.read == rule and sv.meta.n_pairs == len(pairs)
    assert sv.meta.model_id == "random-llama-32" and sv.meta.hidden_size == 32


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("rule", ["answer", "mean"])
def test_batched_with_padding_equals_unbatched(lm, pairs, side, rule):
    one = SteeringVector.train(lm, pairs, layers=[0, 3], read=rule, batch_size=1)
    many = SteeringVector.train(lm, pairs, layers=[0, 3], read=rule, batch_size=5,
                                padding_side=side)
    for layer in (0, 3):
        torch.testing.assert_close(many.vectors[layer], one.vectors[layer], atol=1e-5, rtol=1e-5)


def test_pca_and_logistic_aggregators_follow_the_mean_direction(lm, pairs):
    mean = SteeringVector.train(lm, pairs, layers=[2]).vectors[2]
    for name in ("pca", "logistic"):
        vec = SteeringVector.train(lm, pairs, layers=[2], aggregator=name).vectors[2]
        assert torch.cosine_similarity(vec, mean, dim=0) > 0
        # scaled so the mean difference projects onto it with its own length
        assert (mean @ vec / vec.norm()).item() == pytest.approx(vec.norm().item(), rel=1e-4)


def test_aggregators_on_a_known_direction():
    gen = torch.Generator().manual_seed(0)
    true_D = torch.zeros(8)
    true_D[3] = 2.0
    neg_ND = torch.randn(64, 8, generator=gen) * 0.1
    pos_ND = neg_ND + true_D + torch.randn(64, 8, generator=gen) * 0.1
    torch.testing.assert_close(mean_diff(pos_ND, neg_ND), (pos_ND - neg_ND).mean(0))
    for agg in (pca, logistic):
        vec = agg(pos_ND, neg_ND)
        assert torch.cosine_similarity(vec, true_D, dim=0) > 0.9


def test_misaligned_pair_is_named_for_the_answer_rule(lm, pairs):
    bad = pairs[:2] + [Pair("q : your guest is cold . i pick option", " 1 .", " 2")]
    with pytest.raises(ValueError, match=r"pair 2: positive ' 1 \.' is 2 tokens and negative ' 2' "
                                         r"is 1 tokens, but read='answer'"):
        SteeringVector.train(lm, bad, layers=[1])
    SteeringVector.train(lm, bad, layers=[1], read="mean")  # the mean needs no alignment


def test_layer_outside_the_model_is_refused(lm, pairs):
    with pytest.raises(ValueError, match=r"layer 4 is outside the model: it has 4 decoder blocks"):
        SteeringVector.train(lm, pairs, layers=[4])
    with pytest.raises(ValueError, match="no layers given"):
        SteeringVector.train(lm, pairs, layers=[])


def test_unknown_rule_aggregator_and_empty_pairs_are_refused(lm, pairs):
    with pytest.raises(ValueError, match="unknown read rule 'first'"):
        SteeringVector.train(lm, pairs, layers=[1], read="first")
    with pytest.raises(ValueError, match="unknown aggregator 'median'"):
        SteeringVector.train(lm, pairs, layers=[1], aggregator="median")
    with pytest.raises(ValueError, match="no contrastive pairs"):
        SteeringVector.train(lm, [], layers=[1])


def test_completion_that_adds_no_tokens_is_named(lm, pairs):
    with pytest.raises(ValueError, match=r"pair 1: completion ' ' adds no tokens"):
        SteeringVector.train(lm, [pairs[0], Pair("q :", " ", " no")], layers=[1], read="last")


def test_normalized_training_matches_the_mean_hidden_state_norm_at_the_read_positions(
        lm, hf_model, tokenizer, pairs):
    raw = SteeringVector.train(lm, pairs, layers=[1, 2])
    sv = SteeringVector.train(lm, pairs, layers=[1, 2], normalize=True)
    for layer in (1, 2):  # hidden_states of the last block are after the final norm
        pos_ND, neg_ND = direct_reads(hf_model, tokenizer, pairs, layer, "answer")
        expected = float(torch.cat([pos_ND, neg_ND]).norm(dim=1).mean())
        assert sv.meta.extra["norm_matched"][str(layer)] == pytest.approx(expected, rel=1e-5)
        assert float(sv.vectors[layer].norm()) == pytest.approx(expected, rel=1e-5)
        cos = torch.nn.functional.cosine_similarity(sv.vectors[layer], raw.vectors[layer], dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-6)


def test_norm_matched_keeps_the_direction_and_refuses_what_it_cannot_scale(lm, pairs):
    sv = SteeringVector.train(lm, pairs, layers=[1, 2])
    matched = sv.norm_matched({1: 3.0, 2: 0.5})
    for layer, target in ((1, 3.0), (2, 0.5)):
        assert float(matched.vectors[layer].norm()) == pytest.approx(target, rel=1e-6)
        cos = torch.nn.functional.cosine_similarity(matched.vectors[layer], sv.vectors[layer],
                                                    dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-6)
    assert matched.meta.extra["norm_matched"] == {"1": 3.0, "2": 0.5}
    assert matched.meta.extra["raw_norms"]["1"] == pytest.approx(float(sv.vectors[1].norm()))
    with pytest.raises(ValueError, match=r"no norm given for layer\(s\) \[2\]"):
        sv.norm_matched({1: 1.0})
    with pytest.raises(ValueError, match="layer 1: cannot match a norm of 0.0"):
        sv.norm_matched({1: 0.0, 2: 1.0})
