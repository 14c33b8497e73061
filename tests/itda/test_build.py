"""Construction (Algorithm 1): quality, determinism, de-duplication, cap, resume, bad input."""

from __future__ import annotations

import sys

import pytest
import torch
from itda_synthetic import planted

import itda
from itda import pursuit
from itda.build import ActivationBatch, BuildError


def fvu(d: itda.ITDA, x_ND: torch.Tensor) -> float:
    with torch.no_grad():
        err = ((x_ND - d.decode(d.encode(x_ND))) ** 2).sum()
    return float(err / ((x_ND - x_ND.mean(0)) ** 2).sum())


def test_fvu_falls_as_the_dictionary_grows_and_stays_below_the_loss_threshold(acts):
    # Every training activation left in the stream has relative loss <= threshold once the
    # dictionary stops growing, so held-out FVU on same-distribution data should sit near or
    # below the threshold (FVU normalises by variance around the mean, which the ITDA
    # subtracts, so 1.5x the threshold is a generous bound).
    held = acts[2048:]
    sizes, fvus = [], []
    for max_atoms in (16, 64, 256):
        d = itda.ITDA.build(
            acts[:2048].split(256),
            target_l0=4,
            loss_threshold=0.1,
            max_atoms=max_atoms,
            progress=False,
        )
        sizes.append(d.cfg.d_sae)
        fvus.append(fvu(d, held))
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
    assert fvus[0] > fvus[1] > fvus[2]
    assert fvus[2] < 1.5 * 0.1


def test_lower_threshold_gives_a_larger_dictionary(acts):
    sizes = [
        itda.ITDA.build(
            acts[:2048].split(256), target_l0=4, loss_threshold=t, max_atoms=2048, progress=False
        ).cfg.d_sae
        for t in (0.6, 0.3, 0.1)
    ]
    assert sizes[0] < sizes[1] < sizes[2]


def test_build_is_deterministic_for_a_seed_and_changes_with_it(acts):
    def run(seed):
        return itda.ITDA.build(
            acts[:1024].split(256),
            target_l0=4,
            loss_threshold=0.3,
            max_atoms=400,
            seed=seed,
            progress=False,
        )

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.W_dec, b.W_dec)
    assert a.provenance is not None and c.provenance is not None
    assert not torch.equal(a.provenance.columns["token"][:4], c.provenance.columns["token"][:4])


def test_atoms_are_real_normalised_activations_found_by_provenance(acts):
    d = itda.ITDA.build(
        acts[:1024].split(256), target_l0=4, loss_threshold=0.3, max_atoms=400, progress=False
    )
    x_n = (acts[:1024] - d.b_dec.detach()) / d.act_std.detach()
    for atom in (0, 5, d.cfg.d_sae - 1):
        token = d.describe(atom).token
        torch.testing.assert_close(d.atoms[atom], torch.nn.functional.normalize(x_n[token], dim=0))


def test_dedup_keeps_no_two_atoms_closer_than_the_cosine_bound(acts):
    plain = itda.ITDA.build(
        acts[:1024].split(256), target_l0=4, loss_threshold=0.2, max_atoms=1024, progress=False
    )
    dedup = itda.ITDA.build(
        acts[:1024].split(256),
        target_l0=4,
        loss_threshold=0.2,
        max_atoms=1024,
        dedup_cosine=0.9,
        progress=False,
    )
    cos = (dedup.atoms @ dedup.atoms.T).abs().fill_diagonal_(0)
    assert cos.max() <= 0.9 + 1e-6
    assert dedup.cfg.d_sae < plain.cfg.d_sae


def test_size_cap_is_respected(acts):
    d = itda.ITDA.build(
        acts.split(256), target_l0=4, loss_threshold=0.05, max_atoms=100, progress=False
    )
    assert d.cfg.d_sae == 100
    assert d.cfg.metadata.itda_build["batches_seen"] < len(acts.split(256))


def test_resuming_from_a_partial_dictionary_equals_one_uninterrupted_build(acts, tmp_path):
    batches = acts[:2048].split(256)
    kw = dict(target_l0=4, loss_threshold=0.2, max_atoms=600, progress=False)
    whole = itda.ITDA.build(batches, **kw)
    first = itda.ITDA.build(batches[:3], **kw)
    first.save_model(tmp_path)
    resumed = itda.ITDA.build(batches[3:], resume=itda.ITDA.load(tmp_path), **kw)
    torch.testing.assert_close(resumed.W_dec, whole.W_dec)
    assert resumed.provenance is not None and whole.provenance is not None
    assert torch.equal(resumed.provenance.columns["token"], whole.provenance.columns["token"])


@pytest.mark.parametrize("with_gram", [True, False])
def test_early_stopping_pursuit_builds_the_same_dictionary_as_full_pursuit(
    acts, monkeypatch, with_gram
):
    # the build stops pursuing a token once its loss reaches the threshold; the reference
    # pursues every token for all target_l0 steps and must add exactly the same atoms
    if not with_gram:  # no Gram matrix fits: the pursuit recomputes correlations every step
        monkeypatch.setattr(sys.modules["itda.construction"], "GRAM_MAX_BYTES", 0)
    kw = dict(target_l0=8, loss_threshold=0.15, max_atoms=700, progress=False)
    fast = itda.ITDA.build(acts[:2048].split(256), **kw)
    full_mp = pursuit.matching_pursuit

    def without_stop(*args, stop_loss=None, **kwargs):
        return full_mp(*args, **kwargs)

    monkeypatch.setattr(pursuit, "matching_pursuit", without_stop)
    reference = itda.ITDA.build(acts[:2048].split(256), **kw)
    assert 100 < fast.cfg.d_sae < 700
    assert torch.equal(fast.W_dec, reference.W_dec)


def test_resuming_a_dictionary_already_past_the_size_cap_adds_nothing(acts):
    kw = dict(target_l0=4, loss_threshold=0.05, progress=False)
    big = itda.ITDA.build(acts[:512].split(256), max_atoms=150, **kw)
    resumed = itda.ITDA.build(acts[512:1024].split(256), resume=big, max_atoms=100, **kw)
    assert resumed.cfg.d_sae == big.cfg.d_sae == 150
    torch.testing.assert_close(resumed.W_dec, big.W_dec)


def test_gradient_pursuit_nonnegative_build_encodes_with_nonnegative_codes(acts):
    d = itda.ITDA.build(
        acts[:1024].split(256),
        target_l0=4,
        loss_threshold=0.3,
        max_atoms=400,
        encoder="gp",
        nonnegative=True,
        progress=False,
    )
    z = d.encode(acts[2048:2300])
    assert (z >= 0).all() and ((z > 0).sum(1) <= 4).all()
    assert fvu(d, acts[2048:2300]) < 0.5


def test_batches_with_provenance_keep_it(acts):
    prov = {"prompt": torch.arange(256) // 16, "token": torch.arange(256) % 16}
    d = itda.ITDA.build(
        [ActivationBatch(acts[:256], prov, "layers.3.output", "corpus")],
        target_l0=4,
        loss_threshold=0.3,
        progress=False,
    )
    who = d.describe(d.cfg.d_sae - 1)
    assert who.hook == "layers.3.output" and who.source == "corpus"
    assert who.prompt is not None and who.token is not None and who.token < 16
    assert d.cfg.metadata.hook_name == "layers.3.output"


def test_non_finite_batch_names_the_batch_and_count_and_keeps_finished_work(acts):
    bad = acts[512:768].clone()
    bad[3, 2] = float("nan")
    bad[7, 1] = float("inf")
    with pytest.raises(BuildError, match="batch 2 contains 2 non-finite") as info:
        itda.ITDA.build(
            [acts[:256], acts[256:512], bad], target_l0=4, loss_threshold=0.3, progress=False
        )
    partial = info.value.partial
    assert partial is not None and partial.cfg.d_sae > 4
    assert partial.cfg.metadata.itda_build["batches_seen"] == 2


def test_batch_of_another_width_is_refused(acts):
    with pytest.raises(
        BuildError, match="batch 1 has activation width 20 but the dictionary width is 24"
    ):
        itda.ITDA.build(
            [acts[:256], acts[256:512, :20]], target_l0=4, loss_threshold=0.3, progress=False
        )


def test_empty_stream_is_refused():
    with pytest.raises(ValueError, match="empty activation stream"):
        itda.ITDA.build([], target_l0=4, loss_threshold=0.3, progress=False)


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_loss_threshold_outside_unit_interval_is_refused(threshold):
    with pytest.raises(ValueError, match=r"loss_threshold must be in \(0, 1\]"):
        itda.BuildConfig(loss_threshold=threshold)


def test_target_l0_larger_than_the_size_cap_is_refused():
    with pytest.raises(
        ValueError, match=r"target_l0=64 is larger than the dictionary \(max_atoms=32\)"
    ):
        itda.BuildConfig(target_l0=64, max_atoms=32)


def test_target_l0_larger_than_the_built_dictionary_is_refused():
    x = planted(40, d=8)
    with pytest.raises(
        ValueError, match="target_l0=32 is larger than the dictionary that was built"
    ):
        itda.ITDA.build([x], target_l0=32, loss_threshold=1.0, seed_atoms=8, progress=False)


def test_growing_state_keeps_atoms_in_order_and_the_gram_matrix_exact():
    from itda.build import BuildState
    from itda.provenance import Provenance

    gen = torch.Generator().manual_seed(0)
    chunks = [torch.nn.functional.normalize(torch.randn(n, 12, generator=gen), dim=1)
              for n in (3, 1, 7, 20, 2)]  # forces several buffer growths
    state = BuildState(torch.zeros(12), torch.ones(12), chunks[0], Provenance.empty(), max_atoms=40)
    for chunk in chunks[1:]:
        state.add(chunk, Provenance.empty())
    expected_FD = torch.cat(chunks)
    assert state.size == len(expected_FD) and state.atoms_FD.is_contiguous()
    assert torch.equal(state.atoms_FD, expected_FD)
    assert state.gram_FF is not None and state.gram_FF.shape == (33, 33)
    torch.testing.assert_close(state.gram_FF, expected_FD @ expected_FD.T)
    assert state._gram_CC is not None and state._gram_CC.shape[0] <= 40  # capped at max_atoms


def test_build_steps_keep_the_gram_matrix_exact_when_reusing_pursuit_correlations(acts):
    # the exact-MP step hands the pursuit's x @ atoms.T rows of the added tokens to the Gram
    # matrix instead of recomputing them; the Gram matrix must still equal atoms @ atoms.T
    from itda.build import BuildConfig
    from itda.construction import _seed, _step

    config = BuildConfig(target_l0=4, loss_threshold=0.1, max_atoms=500)
    batches = [ActivationBatch(b) for b in acts[:2048].split(256)]
    state = _seed(batches[0], config)
    added = [_step(state, batch, config) for batch in batches]
    assert sum(added) > 100 and state.gram_FF is not None
    atoms_FD = state.atoms_FD
    torch.testing.assert_close(state.gram_FF, atoms_FD @ atoms_FD.T, atol=1e-5, rtol=1e-5)
