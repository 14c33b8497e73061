"""The batched pursuit kernels equal naive one-token-at-a-time loops."""

from __future__ import annotations

import pytest
import torch

from itda import pursuit
from itda.pursuit import gradient_pursuit, gram_matrix, matching_pursuit, to_dense

F, D, N, L = 60, 12, 9, 6


def naive_mp(x_ND, dict_FD, l0, nonneg, allowed=None, stop_loss=None):
    """Textbook matching pursuit, one token at a time, correlations recomputed each step;
    with ``stop_loss`` a token stops once ``||r||^2 <= stop_loss * ||x||^2``."""
    out = []
    for n, x_D in enumerate(x_ND):
        r_D, z_F = x_D.clone(), torch.zeros(dict_FD.shape[0])
        pool = range(dict_FD.shape[0]) if allowed is None else allowed[n].tolist()
        for _ in range(l0):
            if stop_loss is not None and float(r_D @ r_D) <= stop_loss * float(x_D @ x_D):
                break
            corr = {k: float(dict_FD[k] @ r_D) for k in pool}
            k = max(corr, key=lambda j: corr[j] if nonneg else abs(corr[j]))
            c = corr[k]
            if nonneg and c <= 0:
                continue
            z_F[k] += c
            r_D = r_D - c * dict_FD[k]
        out.append(z_F)
    return torch.stack(out)


def naive_gp(x_ND, dict_FD, l0, nonneg, allowed=None):
    """Gradient pursuit as in Blumensath & Davies (2008), with the non-negative clamp."""
    out = []
    for n, x_D in enumerate(x_ND):
        r_D, support, coef = x_D.clone(), [], {}
        pool = range(dict_FD.shape[0]) if allowed is None else allowed[n].tolist()
        for _ in range(l0):
            corr = {k: float(dict_FD[k] @ r_D) for k in pool}
            k = max(corr, key=lambda j: corr[j] if nonneg else abs(corr[j]))
            if not (nonneg and corr[k] <= 0) and k not in support:
                support.append(k)
                coef[k] = 0.0
            if not support:
                continue
            A_SD = dict_FD[support]
            g_S = A_SD @ r_D
            c_D = g_S @ A_SD
            a = float(g_S @ g_S) / float(c_D @ c_D) if float(c_D @ c_D) > 0 else 0.0
            for i, s in enumerate(support):
                coef[s] += a * float(g_S[i])
                if nonneg:
                    coef[s] = max(coef[s], 0.0)
            r_D = x_D - sum(coef[s] * dict_FD[s] for s in support)
        z_F = torch.zeros(dict_FD.shape[0])
        for s, c in coef.items():
            z_F[s] = c
        out.append(z_F)
    return torch.stack(out)


@pytest.fixture
def problem():
    gen = torch.Generator().manual_seed(0)
    dict_FD = torch.nn.functional.normalize(torch.randn(F, D, generator=gen), dim=1)
    x_ND = torch.randn(N, D, generator=gen) + 0.5
    return x_ND, dict_FD


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize(
    "mode", ["recompute", "gram", "tiny_memory_budget", "gram_tiny_memory_budget"]
)
def test_matching_pursuit_equals_naive_loop(problem, nonneg, mode):
    x_ND, dict_FD = problem
    kw = {"gram_FF": gram_matrix(dict_FD)} if "gram" in mode else {}
    if "tiny" in mode:
        kw["max_bytes"] = 256  # forces one token and a few atoms per chunk
    got = matching_pursuit(x_ND, dict_FD, L, nonnegative=nonneg, **kw)
    torch.testing.assert_close(
        to_dense(got, F), naive_mp(x_ND, dict_FD, L, nonneg), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("mode", ["recompute", "gram", "gram_tiny_memory_budget"])
def test_matching_pursuit_with_stop_loss_equals_naive_loop_that_stops(nonneg, mode):
    gen = torch.Generator().manual_seed(1)
    dict_FD = torch.nn.functional.normalize(torch.randn(F, D, generator=gen), dim=1)
    # tokens built from 1-3 atoms plus noise stop after different numbers of steps, so the
    # live set shrinks (and is compacted) several times; a few never reach the floor
    idx_NK = torch.randint(0, F, (40, 3), generator=gen)
    weights_NK = torch.rand(40, 3, generator=gen) * (torch.arange(40) % 4 < 3)[:, None]
    x_ND = (weights_NK[..., None] * dict_FD[idx_NK]).sum(1)
    x_ND += 0.05 * torch.randn(40, D, generator=gen) + 0.3 * (torch.arange(40) % 7 == 0)[:, None]
    kw = {"gram_FF": gram_matrix(dict_FD)} if "gram" in mode else {}
    if "tiny" in mode:
        kw["max_bytes"] = 1024
    got = matching_pursuit(x_ND, dict_FD, L, nonnegative=nonneg, stop_loss=0.05, **kw)
    want = naive_mp(x_ND, dict_FD, L, nonneg, stop_loss=0.05)
    torch.testing.assert_close(to_dense(got, F), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.residual_ND, x_ND - want @ dict_FD, atol=1e-5, rtol=1e-5)
    steps_N = (got.atoms_NL >= 0).sum(1)
    assert len(set(steps_N.tolist())) >= 3  # the test exercises several stopping points
    loss_N = (got.residual_ND**2).sum(1) / (x_ND**2).sum(1)
    stopped_N = steps_N < L
    assert (loss_N[stopped_N] <= 0.05).all()
    if not nonneg:  # a signed pursuit only stops at the floor
        assert (loss_N[~stopped_N] > 0.0).all() and stopped_N.any() and (~stopped_N).any()


def test_precomputed_correlations_give_the_same_pursuit_and_are_not_modified(problem):
    x_ND, dict_FD = problem
    gram_FF = gram_matrix(dict_FD)
    corr_NF = x_ND @ dict_FD.T
    before = corr_NF.clone()
    got = matching_pursuit(x_ND, dict_FD, L, gram_FF=gram_FF, correlations_NF=corr_NF,
                           max_bytes=1024)  # several token chunks
    want = matching_pursuit(x_ND, dict_FD, L, gram_FF=gram_FF, max_bytes=1024)
    assert torch.equal(got.atoms_NL, want.atoms_NL)
    torch.testing.assert_close(got.coefs_NL, want.coefs_NL)
    assert torch.equal(corr_NF, before)


def test_precomputed_correlations_of_the_wrong_shape_or_path_are_refused(problem):
    x_ND, dict_FD = problem
    gram_FF = gram_matrix(dict_FD)
    with pytest.raises(ValueError, match=r"must be fp32 of shape \(9, 60\)"):
        matching_pursuit(x_ND, dict_FD, L, gram_FF=gram_FF, correlations_NF=torch.zeros(9, 59))
    with pytest.raises(ValueError, match="only used by the Gram path"):
        matching_pursuit(x_ND, dict_FD, L, correlations_NF=x_ND @ dict_FD.T)


def test_stop_loss_with_candidates_is_refused(problem):
    x_ND, dict_FD = problem
    with pytest.raises(ValueError, match="stop_loss is only implemented for the exact"):
        matching_pursuit(x_ND, dict_FD, L, candidates=20, stop_loss=0.1)


@pytest.mark.parametrize("stop_loss", [-0.1, 1.5])
def test_stop_loss_outside_the_unit_interval_is_refused(problem, stop_loss):
    x_ND, dict_FD = problem
    with pytest.raises(ValueError, match=f"relative loss in \\[0, 1\\], got {stop_loss}"):
        matching_pursuit(x_ND, dict_FD, L, stop_loss=stop_loss)


@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("max_bytes", [pursuit.DEFAULT_MAX_BYTES, 512])
def test_gradient_pursuit_equals_naive_loop(problem, nonneg, max_bytes):
    x_ND, dict_FD = problem
    got = gradient_pursuit(x_ND, dict_FD, L, nonnegative=nonneg, max_bytes=max_bytes)
    torch.testing.assert_close(
        to_dense(got, F), naive_gp(x_ND, dict_FD, L, nonneg), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("kind", ["mp", "gp"])
@pytest.mark.parametrize("nonneg", [False, True])
@pytest.mark.parametrize("with_gram", [False, True])
def test_screened_pursuit_equals_naive_loop_restricted_to_top_candidates(
    problem, kind, nonneg, with_gram
):
    x_ND, dict_FD = problem
    m = 15
    corr_NF = x_ND @ dict_FD.T
    allowed = (corr_NF if nonneg else corr_NF.abs()).topk(m, dim=1).indices
    fast = matching_pursuit if kind == "mp" else gradient_pursuit
    naive = naive_mp if kind == "mp" else naive_gp
    gram = gram_matrix(dict_FD) if with_gram else None
    got = fast(x_ND, dict_FD, L, nonnegative=nonneg, candidates=m, gram_FF=gram)
    torch.testing.assert_close(
        to_dense(got, F), naive(x_ND, dict_FD, L, nonneg, allowed), atol=1e-4, rtol=1e-4
    )


def test_residual_is_input_minus_reconstruction(problem):
    x_ND, dict_FD = problem
    for result in (
        matching_pursuit(x_ND, dict_FD, L),
        gradient_pursuit(x_ND, dict_FD, L),
        matching_pursuit(x_ND, dict_FD, L, candidates=20),
    ):
        torch.testing.assert_close(
            result.residual_ND, x_ND - to_dense(result, F) @ dict_FD, atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("kind", ["mp", "gp"])
def test_bf16_dictionary_is_pursued_with_fp32_arithmetic(problem, kind):
    x_ND, dict_FD = problem
    dict_bf16 = dict_FD.bfloat16()
    fast = matching_pursuit if kind == "mp" else gradient_pursuit
    naive = naive_mp if kind == "mp" else naive_gp
    got = fast(x_ND, dict_bf16, L, max_bytes=1024)
    assert got.coefs_NL.dtype == torch.float32 and got.residual_ND.dtype == torch.float32
    torch.testing.assert_close(
        to_dense(got, F), naive(x_ND, dict_bf16.float(), L, False), atol=1e-4, rtol=1e-4
    )


def test_gram_matrix_in_chunks_equals_dense_product(problem):
    _, dict_FD = problem
    torch.testing.assert_close(gram_matrix(dict_FD, max_bytes=200), dict_FD @ dict_FD.T)


def test_memory_budget_splits_large_problems_into_bounded_chunks():
    # 50,000 atoms x 3,072 dims with 4,096 tokens: each token chunk's correlations fit the budget
    budget = pursuit.DEFAULT_MAX_BYTES
    chunks = pursuit.token_chunks(torch.empty(4096, 1), 50_000, budget)
    assert sum(len(c) for c in chunks) == 4096
    assert all(4 * len(c) * 50_000 <= budget for c in chunks)
    atom_chunk = pursuit._atom_chunk(torch.empty(50_000, 3072), budget)
    assert 4 * atom_chunk * 3072 <= budget


def test_activation_width_mismatch_is_refused(problem):
    x_ND, dict_FD = problem
    with pytest.raises(ValueError, match="activation width 11 differs from dictionary width 12"):
        matching_pursuit(x_ND[:, :11], dict_FD, L)


def test_l0_larger_than_the_dictionary_is_refused(problem):
    x_ND, dict_FD = problem
    with pytest.raises(
        ValueError, match="target_l0=61 must be between 1 and the dictionary size 60"
    ):
        gradient_pursuit(x_ND, dict_FD, 61)


def test_fewer_candidates_than_steps_is_refused(problem):
    x_ND, dict_FD = problem
    with pytest.raises(ValueError, match="candidates=3 must be at least target_l0=6"):
        matching_pursuit(x_ND, dict_FD, L, candidates=3)


@pytest.mark.parametrize("n_atoms", [100, 512, 1000, 4096])
def test_chunked_argmax_equals_torch_max_and_min_with_first_occurrence_ties(n_atoms):
    from itda.pursuit import ARGMAX_CHUNK, _best, _extreme

    gen = torch.Generator().manual_seed(n_atoms)
    corr_TF = torch.randn(9, n_atoms, generator=gen).round(decimals=1)  # many exact ties
    corr_TF[0, :] = 1.0  # every entry ties: the first index must win
    corr_TF[1, -1] = 50.0  # the maximum sits in the tail (or the last chunk)
    corr_TF[2, ARGMAX_CHUNK % n_atoms] = corr_TF[2, 0] = 40.0  # tie across chunks
    for largest in (True, False):
        v_T, k_T = _extreme(corr_TF, largest)
        ref_v, ref_k = corr_TF.max(dim=1) if largest else corr_TF.min(dim=1)
        assert torch.equal(v_T, ref_v) and torch.equal(k_T, ref_k)
    k_T, coef_T = _best(corr_TF, nonneg=False)
    assert torch.equal(coef_T.abs(), corr_TF.abs().amax(dim=1))
    assert torch.equal(corr_TF[torch.arange(9), k_T], coef_T)


@pytest.mark.parametrize("candidates", [None, 8])
def test_a_strided_gram_view_gives_the_same_pursuit_as_a_contiguous_gram(candidates):
    gen = torch.Generator().manual_seed(3)
    atoms_FD = torch.nn.functional.normalize(torch.randn(48, 16, generator=gen), dim=1)
    x_ND = torch.randn(10, 16, generator=gen)
    buffer_CC = torch.full((64, 64), float("nan"))  # a growing build's Gram buffer
    buffer_CC[:48, :48] = gram_matrix(atoms_FD)
    view_FF = buffer_CC[:48, :48]
    assert not view_FF.is_contiguous()
    a = matching_pursuit(x_ND, atoms_FD, 5, gram_FF=view_FF, candidates=candidates)
    b = matching_pursuit(x_ND, atoms_FD, 5, gram_FF=gram_matrix(atoms_FD), candidates=candidates)
    assert torch.equal(a.atoms_NL, b.atoms_NL)
    torch.testing.assert_close(a.residual_ND, b.residual_ND)
