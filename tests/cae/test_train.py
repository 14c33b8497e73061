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


def peer_pca(pos_ND, neg_ND):
    """Reference: steering-vectors' ``pca_aggregator`` written out (a unit vector): the first
    left singular vector of ``[deltas; -deltas]^T`` (uncentred PCA), flipped so the deltas
    project on it positively on average."""
    deltas_ND = (pos_ND - neg_ND).double()
    u, _s, _v = torch.svd(torch.cat([deltas_ND, -deltas_ND]).T)
    vec_D = u[:, 0]
    return torch.sign((deltas_ND @ vec_D).mean()) * vec_D


def peer_logistic(pos_ND, neg_ND, c=1.0, steps=500):
    """Reference: the regression steering-vectors' ``logistic_aggregator`` fits (sklearn's
    ``LogisticRegression(fit_intercept=False)``: mean log-loss + |w|^2 / (2 C N), labels
    +-1), solved here by Newton's method; its unit weight vector."""
    x_MD = torch.cat([pos_ND, neg_ND]).double()
    y_M = torch.cat([torch.ones(len(pos_ND)), -torch.ones(len(neg_ND))]).double()
    w_D = torch.zeros(x_MD.shape[1], dtype=torch.float64)
    lam = 1.0 / (c * len(x_MD))
    for _ in range(steps):
        p_M = torch.sigmoid(-y_M * (x_MD @ w_D))
        grad_D = -(x_MD * (y_M * p_M)[:, None]).mean(0) + lam * w_D
        hess_DD = (x_MD.T * (p_M * (1 - p_M))) @ x_MD / len(x_MD) + lam * torch.eye(len(w_D))
        w_D = w_D - torch.linalg.solve(hess_DD, grad_D)
    return w_D / w_D.norm()


def planted(n=256, dim=16, seed=0):
    """Differences around a known direction plus a larger nuisance direction whose sign
    alternates (like an answer letter), so PCA and the mean difference disagree."""
    gen = torch.Generator().manual_seed(seed)
    true_D, letter_D = torch.zeros(dim), torch.zeros(dim)
    true_D[3], letter_D[5] = 1.0, 4.0
    sign_N1 = (torch.arange(n) % 2 * 2 - 1).float()[:, None]
    neg_ND = torch.randn(n, dim, generator=gen)
    pos_ND = neg_ND + true_D + sign_N1 * letter_D + 0.3 * torch.randn(n, dim, generator=gen)
    return pos_ND, neg_ND


@pytest.mark.parametrize("name", ["pca", "logistic"])
def test_every_aggregator_has_the_mean_difference_length(lm, pairs, name):
    """At the same multiplier every aggregator adds a vector of the same length."""
    mean = SteeringVector.train(lm, pairs, layers=[2]).vectors[2]
    vec = SteeringVector.train(lm, pairs, layers=[2], aggregator=name).vectors[2]
    assert vec.norm().item() == pytest.approx(mean.norm().item(), rel=1e-5)
    assert torch.cosine_similarity(vec, mean, dim=0) > 0


def test_pca_points_where_the_peer_does_at_the_mean_difference_length():
    pos_ND, neg_ND = planted()
    vec_D = pca(pos_ND, neg_ND).double()
    ref_D = peer_pca(pos_ND, neg_ND)
    assert torch.cosine_similarity(vec_D, ref_D, dim=0).item() == pytest.approx(1.0, abs=1e-6)
    assert vec_D.norm().item() == pytest.approx(mean_diff(pos_ND, neg_ND).norm().item(), rel=1e-5)
    # here the first principal direction is the alternating nuisance, not the mean
    assert abs(vec_D[5]) > 0.99 * vec_D.norm()


def test_logistic_points_where_the_peer_does_at_the_mean_difference_length():
    gen = torch.Generator().manual_seed(1)
    true_D = torch.zeros(12)
    true_D[2], true_D[7] = 1.0, -0.5
    neg_ND = torch.randn(400, 12, generator=gen)
    pos_ND = torch.randn(400, 12, generator=gen) + true_D
    vec_D = logistic(pos_ND, neg_ND).double()
    ref_D = peer_logistic(pos_ND, neg_ND)
    assert torch.cosine_similarity(vec_D, ref_D, dim=0).item() > 0.99
    assert vec_D.norm().item() == pytest.approx(mean_diff(pos_ND, neg_ND).norm().item(), rel=1e-5)


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
