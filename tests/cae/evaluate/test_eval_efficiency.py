"""Sample efficiency: the curve of a synthetic problem with a known answer, the model-level
curve on a tiny random Llama, and the error for n larger than the dataset."""

from __future__ import annotations

import pytest
import torch

from cae.evaluate.efficiency import (
    EfficiencyConfig,
    doubling_sizes,
    efficiency_curve,
    first_flat,
    model_efficiency,
)
from tests.cae.evaluate.test_eval_behaviour import ITEMS


def synthetic(n: int, dim: int, noise_sq: float, seed: int = 0):
    """Differences mu + eps with |mu| = 1 and E|eps|^2 = noise_sq (negatives are zero).

    The mean of n differences has cosine ~ sqrt((1 + s/N) / (1 + s/n)) to the mean of all
    N, with s = noise_sq: for s = 4, N = 512 that is 0.946 at n = 32 and 0.974 at n = 64,
    so the first n reaching 0.95 is 64.
    """
    gen = torch.Generator().manual_seed(seed)
    mu_D = torch.zeros(dim)
    mu_D[0] = 1.0
    eps_ND = torch.randn(n, dim, generator=gen) * (noise_sq / dim) ** 0.5
    return mu_D + eps_ND, torch.zeros(n, dim)


def test_doubling_sizes_end_at_the_dataset_size():
    assert doubling_sizes(1) == [1]
    assert doubling_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert doubling_sizes(16) == [1, 2, 4, 8, 16]


def test_synthetic_curve_flattens_where_the_formula_says():
    pos, neg = synthetic(512, 256, 4.0)
    res = efficiency_curve(pos, neg, EfficiencyConfig(draws=8, seed=1))
    assert res.sizes == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    expected = [((1 + 4 / 512) / (1 + 4 / n)) ** 0.5 for n in res.sizes]
    # the formula is a ratio of expectations: close once n is not tiny
    assert res.mean_cosine[3:] == pytest.approx(expected[3:], abs=0.02)
    assert res.mean_cosine[-1] == pytest.approx(1.0)
    assert res.n_flat_cosine == 64
    assert all(len(row) == 8 for row in res.cosines[:-1]) and len(res.cosines[-1]) == 1


def test_effect_function_is_called_per_draw_and_its_flat_point_reported():
    pos, neg = synthetic(64, 32, 0.0)
    res = efficiency_curve(pos, neg, EfficiencyConfig(sizes=[1, 4, 64], draws=3),
                           effect=lambda v: float(v[0]))
    assert [len(r) for r in res.effects] == [3, 3, 1]
    assert res.mean_effect == pytest.approx([1.0, 1.0, 1.0])
    assert res.n_flat_effect == 1 and res.n_flat_cosine == 1


def test_same_seed_gives_the_same_curve():
    pos, neg = synthetic(32, 16, 2.0)
    a = efficiency_curve(pos, neg, EfficiencyConfig(draws=3, seed=7))
    b = efficiency_curve(pos, neg, EfficiencyConfig(draws=3, seed=7))
    assert a.cosines == b.cosines


def test_first_flat_uses_the_stated_fraction_of_the_last_value():
    assert first_flat([1, 2, 4], [0.5, 0.9, 1.0], 0.9) == 2
    assert first_flat([1, 2, 4], [0.5, 0.9, 1.0], 0.95) == 4
    assert first_flat([1, 2], [0.1, -0.2], 0.95) is None
    # a lucky early value does not count when the curve falls below the line again
    assert first_flat([1, 2, 4, 8, 16], [0.4, 0.99, 0.7, 0.97, 1.0], 0.95) == 8


def test_n_larger_than_the_dataset_is_a_clear_error(lm):
    pos, neg = synthetic(10, 4, 1.0)
    with pytest.raises(ValueError, match=r"sample size n=16 is larger than the dataset \(10 pairs\)"):
        efficiency_curve(pos, neg, EfficiencyConfig(sizes=[1, 16]))
    with pytest.raises(ValueError, match=r"sample size n=8 is larger than the dataset \(4 pairs\)"):
        model_efficiency(lm, ITEMS, ITEMS, 1, EfficiencyConfig(sizes=[8]), disjoint=False)
    with pytest.raises(ValueError, match=r"sample size n=3 is larger than the dataset \(2 pairs "
                                         r"in the subset half\)"):
        model_efficiency(lm, ITEMS, ITEMS, 1, EfficiencyConfig(sizes=[3]))


@pytest.mark.parametrize("kwargs, message", [
    ({"draws": 0}, "draws must be >= 1"),
    ({"flat_fraction": 1.5}, r"flat_fraction must be in \(0, 1\]"),
    ({"sizes": [0, 2]}, "sizes must be positive"),
    ({"aggregator": "median"}, "unknown aggregator 'median'"),
])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EfficiencyConfig(**kwargs)


def test_model_curve_full_size_vector_is_the_trained_vector(lm):
    from cae import SteeringVector
    from cae.evaluate.behaviour import BehaviourConfig, behaviour

    res = model_efficiency(lm, ITEMS[:3], ITEMS, 1, EfficiencyConfig(draws=2), multiplier=2.0,
                           disjoint=False)
    assert res.sizes == [1, 2, 3] and res.mean_cosine[-1] == pytest.approx(1.0, abs=1e-6)
    sv = SteeringVector.train(lm, ITEMS[:3], [1])
    ref = behaviour(lm, ITEMS, sv, BehaviourConfig([-2.0, 2.0]))
    shift = sum(r[1] - r[0] for r in ref.propensity) / len(ITEMS)
    assert res.mean_effect[-1] == pytest.approx(shift, abs=1e-4)


def test_cosine_is_taken_to_a_vector_of_the_disjoint_half_and_effects_are_length_matched(lm):
    """The reference is trained on pairs no subset holds; every subset vector is rescaled to
    the full vector's length before its effect, and its own length is kept as a ratio."""
    from cae import SteeringVector
    from cae.evaluate.behaviour import BehaviourConfig, behaviour
    from cae.evaluate.efficiency import halves
    from cae.organism.corpus import items

    train = [i.pair() for i in items("kind", "ab", 12, "train")]
    pool, ref = halves(len(train), seed=3)
    assert set(pool.tolist()).isdisjoint(ref.tolist()) and len(pool) + len(ref) == 12
    res = model_efficiency(lm, train, ITEMS, 1, EfficiencyConfig(draws=2, seed=3),
                           multiplier=2.0, length=5.0)
    pool_sv = SteeringVector.train(lm, [train[i] for i in pool.tolist()], [1])
    ref_sv = SteeringVector.train(lm, [train[i] for i in ref.tolist()], [1])
    cos = float(torch.cosine_similarity(pool_sv.vectors[1], ref_sv.vectors[1], dim=0))
    assert (res.n_pool, res.n_reference, res.sizes[-1]) == (6, 6, 6)
    assert res.mean_cosine[-1] == pytest.approx(cos, abs=1e-5)
    assert res.reference_cosine == pytest.approx(cos, abs=1e-5)
    assert res.length_ratio[-1][0] == pytest.approx(float(pool_sv.vectors[1].norm()) / 5.0,
                                                    rel=1e-4)
    at_length = SteeringVector({1: pool_sv.vectors[1] / pool_sv.vectors[1].norm() * 5.0},
                               pool_sv.meta)
    ref_res = behaviour(lm, ITEMS, at_length, BehaviourConfig([-2.0, 2.0]))
    shift = sum(r[1] - r[0] for r in ref_res.propensity) / len(ITEMS)
    assert res.mean_effect[-1] == pytest.approx(shift, abs=1e-4)
