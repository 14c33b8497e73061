"""Batched matching pursuit and gradient pursuit for a fixed number of steps.

Matching pursuit: Mallat & Zhang, "Matching pursuits with time-frequency dictionaries" (1993).
Gradient pursuit: Blumensath & Davies, "Gradient Pursuits" (IEEE TSP 2008). Both are the
encoders of ITDA (Leask, Nanda, Al Moubayed, ICML 2025, arXiv 2505.17769).

Shape legend: N tokens, D model width, F atoms, L pursuit steps (the L0), M screened
candidates per token, T tokens in one chunk.

Every kernel works on unit-norm atoms ``dict_FD`` stored in fp32 or bf16; all arithmetic
(correlations, coefficients, residuals) is done in fp32, upcasting the dictionary one chunk of
atoms at a time, so the working memory is bounded by ``max_bytes`` plus the optional Gram
matrix. The step that dominates the cost is finding the atom most correlated with every
residual. Three strategies:

- ``gram_FF`` given (matching pursuit only): correlations are computed once and then updated
  in place with ``corr -= coef * G[k]`` (one gathered row per token per step);
- no Gram: the correlations are recomputed from the residual each step, chunked over atoms;
- ``candidates=M``: each token keeps only its ``M`` atoms most correlated with the input and
  pursues inside that set, fetching one Gram row per step restricted to the set (from
  ``gram_FF`` or from the gathered candidate atoms). This is an approximation (exact when
  ``M >= F``) that makes a step cost ``O(M)`` instead of ``O(F)``.

Measured choices (``docs/bench/itda.md``): with a Gram matrix on CPU, tokens are encoded in
blocks whose correlations fit in ``CPU_GRAM_BLOCK_BYTES`` (an L3-sized block); elsewhere tokens
are only chunked to honour ``max_bytes``. The per-step argmax is a values-only reduction over
chunks of ``ARGMAX_CHUNK`` atoms followed by an indexed one inside the winning chunk (exact,
same first-occurrence tie rule as ``torch.max``), because torch's indexed reduction is an
order of magnitude slower per element than ``amax``.

Example:
    >>> import torch
    >>> from itda.pursuit import matching_pursuit
    >>> atoms_FD = torch.nn.functional.normalize(torch.randn(64, 16), dim=-1)
    >>> out = matching_pursuit(torch.randn(8, 16), atoms_FD, l0=4)
    >>> out.atoms_NL.shape, out.coefs_NL.shape
    (torch.Size([8, 4]), torch.Size([8, 4]))
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

DEFAULT_MAX_BYTES = 2**28
"""Working-memory budget of one kernel call (correlations and upcast chunks), in bytes."""
CPU_GRAM_BLOCK_BYTES = 2**24
"""On CPU, the Gram path encodes tokens in blocks whose correlations fit in this many bytes
(16 MiB: inside a server L3 cache), so the per-step update and argmax passes stay in cache.
Measured (docs/bench/itda.md): 256 tokens x 16,384 atoms per block is ~1.5x faster than one
1,024-token block; 128 or 512 tokens are slower again."""

GRAM_MAX_BYTES = 2**31
"""Largest Gram matrix (F*F*4 bytes) an ITDA caches, and a build keeps, to speed up matching pursuit."""


class Pursuit(NamedTuple):
    """Result of a pursuit: per step the chosen atom (-1 when none) and its coefficient.

    Example:
        >>> import torch
        >>> dict_FD = torch.eye(4)
        >>> result = matching_pursuit(torch.tensor([[0.0, 3.0, 0.0, -1.0]]), dict_FD, l0=2)
        >>> result.atoms_NL.tolist(), result.coefs_NL.tolist()
        ([[1, 3]], [[3.0, -1.0]])
        >>> to_dense(result, 4).tolist(), result.residual_ND.abs().max().item()
        ([[0.0, 3.0, 0.0, -1.0]], 0.0)
    """

    atoms_NL: Int[Tensor, "N L"]
    """Atom chosen at each of the L steps of each of the N tokens; -1 where a token stopped."""
    coefs_NL: Float[Tensor, "N L"]
    """Coefficient of that step's atom, 0 where the atom is -1 (matching pursuit: the amount
    added at that step, repeats of an atom sum; gradient pursuit: the atom's final coefficient)."""
    residual_ND: Float[Tensor, "N D"]
    """What the chosen atoms leave unexplained: ``x - coefs @ atoms``."""


def to_dense(result: Pursuit, n_atoms: int) -> Float[Tensor, "N F"]:
    """Scatter a pursuit's (atom, coefficient) pairs into dense codes (repeats are summed)."""
    n = result.atoms_NL.shape[0]
    codes_NF = torch.zeros(n, n_atoms, dtype=torch.float32, device=result.coefs_NL.device)
    valid_NL = result.atoms_NL >= 0
    index_NL = result.atoms_NL.clamp(min=0)
    codes_NF.scatter_add_(1, index_NL, result.coefs_NL * valid_NL)
    return codes_NF


def gram_matrix(dict_FD: Float[Tensor, "F D"], max_bytes: int = DEFAULT_MAX_BYTES) -> Tensor:
    """fp32 Gram matrix ``D @ D.T`` of a dictionary, computed in chunks of atoms."""
    n_atoms = dict_FD.shape[0]
    gram_FF = torch.empty(n_atoms, n_atoms, dtype=torch.float32, device=dict_FD.device)
    step = _atom_chunk(dict_FD, max_bytes)
    for i in range(0, n_atoms, step):
        rows_CD = dict_FD[i : i + step].float()
        for j in range(0, n_atoms, step):
            gram_FF[i : i + step, j : j + step] = rows_CD @ dict_FD[j : j + step].float().T
    return gram_FF


def matching_pursuit(
    x_ND: Float[Tensor, "N D"],
    dict_FD: Float[Tensor, "F D"],
    l0: int,
    *,
    nonnegative: bool = False,
    gram_FF: Tensor | None = None,
    candidates: int | None = None,
    stop_loss: float | None = None,
    correlations_NF: Tensor | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Pursuit:
    """Matching pursuit for ``l0`` steps (an atom may be chosen more than once).

    Each step picks the atom with the largest correlation (largest absolute correlation when
    ``nonnegative`` is False) with the residual, adds that correlation to its coefficient and
    removes its projection from the residual. With ``nonnegative`` a token whose best
    correlation is not positive stops (atom -1, coefficient 0). With ``stop_loss`` a token
    also stops once its relative loss ``||r||^2 / ||x||^2`` is at most ``stop_loss`` (the
    rule of sae_lens's ``residual_threshold``, relative instead of absolute); its remaining
    steps are atom -1, coefficient 0. Not available with ``candidates``.
    ``correlations_NF``: ``x @ dict.T`` (fp32) already computed by the caller, used by the
    Gram path instead of computing it again; it is read, not modified.

    Example:
        >>> import torch
        >>> dict_FD = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> matching_pursuit(torch.tensor([[2.0, -1.0]]), dict_FD, l0=1).atoms_NL.tolist()
        [[0]]
        >>> matching_pursuit(torch.tensor([[-2.0, 1.0]]), dict_FD, l0=1, nonnegative=True).atoms_NL.tolist()
        [[1]]
    """
    _check_inputs(x_ND, dict_FD, l0, candidates)
    if stop_loss is not None and candidates is not None:
        raise ValueError("stop_loss is only implemented for the exact pursuit (candidates=None)")
    if stop_loss is not None and not 0.0 <= stop_loss <= 1.0:
        raise ValueError(f"stop_loss is a relative loss in [0, 1], got {stop_loss}")
    if correlations_NF is not None:
        _check_correlations(correlations_NF, x_ND, dict_FD, gram_FF, candidates)
    if candidates is not None and candidates < dict_FD.shape[0]:
        return _screened(x_ND, dict_FD, l0, nonnegative, gram_FF, candidates, max_bytes, "mp")
    block = max_bytes
    if gram_FF is not None and x_ND.device.type == "cpu":
        block = min(max_bytes, CPU_GRAM_BLOCK_BYTES)
    chunks = token_chunks(x_ND, dict_FD.shape[0], block)
    corr_chunks: list[Tensor | None] = [None] * len(chunks)
    if correlations_NF is not None:
        corr_chunks = list(correlations_NF.split(len(chunks[0])))
    parts = [
        _mp_chunk(x_TD, dict_FD, l0, nonnegative, gram_FF, max_bytes, stop_loss, corr_TF)
        for x_TD, corr_TF in zip(chunks, corr_chunks, strict=True)
    ]
    return _cat(parts)


def gradient_pursuit(
    x_ND: Float[Tensor, "N D"],
    dict_FD: Float[Tensor, "F D"],
    l0: int,
    *,
    nonnegative: bool = False,
    gram_FF: Tensor | None = None,
    candidates: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Pursuit:
    """Gradient pursuit for ``l0`` steps (Blumensath & Davies 2008, Algorithm 1).

    Each step adds the most correlated atom to the support (unless already there), then moves
    all support coefficients along the gradient restricted to the support:
    ``g = D_S^T r, c = D_S g, a = <r, c> / ||c||^2, x_S += a g, r -= a c``.
    With ``nonnegative`` the coefficients are clamped at 0 after each step and a token whose
    best correlation is not positive selects nothing new. ``gram_FF`` is only used together
    with ``candidates`` (exact gradient pursuit recomputes correlations each step).

    Example: on orthonormal atoms two steps recover a two-atom mixture exactly:

        >>> import torch
        >>> x_ND = torch.tensor([[2.0, 0.0, 1.0]])
        >>> result = gradient_pursuit(x_ND, torch.eye(3), l0=2, nonnegative=True)
        >>> result.atoms_NL.tolist(), result.coefs_NL.tolist(), result.residual_ND.norm().item()
        ([[0, 2]], [[2.0, 1.0]], 0.0)
    """
    _check_inputs(x_ND, dict_FD, l0, candidates)
    if candidates is not None and candidates < dict_FD.shape[0]:
        return _screened(x_ND, dict_FD, l0, nonnegative, gram_FF, candidates, max_bytes, "gp")
    per_token = max(dict_FD.shape[0], l0 * dict_FD.shape[1])
    parts = [
        _gp_chunk(x_TD, dict_FD, l0, nonnegative, max_bytes)
        for x_TD in token_chunks(x_ND, per_token, max_bytes)
    ]
    return _cat(parts)


# --- exact kernels ---------------------------------------------------------------------


def _mp_chunk(
    x_TD: Tensor,
    dict_FD: Tensor,
    l0: int,
    nonneg: bool,
    gram_FF: Tensor | None,
    max_bytes: int,
    stop_loss: float | None = None,
    given_TF: Tensor | None = None,
) -> Pursuit:
    r_TD = x_TD.float().clone()
    n = r_TD.shape[0]
    atoms_TL = torch.full((n, l0), -1, dtype=torch.long, device=r_TD.device)
    coefs_TL = torch.zeros(n, l0, dtype=torch.float32, device=r_TD.device)
    corr_TF = None
    if gram_FF is not None:
        corr_TF = given_TF.clone() if given_TF is not None else _correlate(r_TD, dict_FD, max_bytes)
    live = _Live(r_TD, corr_TF, stop_loss)
    rows_TF = None
    if live.corr_TF is not None and live.corr_TF.device.type != "cpu":
        rows_TF = torch.empty_like(live.corr_TF)
    for step in range(l0):
        if live.corr_TF is None:
            k_T, coef_T = _best_streamed(live.r_TD, dict_FD, nonneg, max_bytes)
        else:
            k_T, coef_T = _best(live.corr_TF, nonneg)
        coef_T = coef_T * live.running_T
        atoms_TL[live.index_T, step] = torch.where(coef_T != 0, k_T, -1)
        coefs_TL[live.index_T, step] = coef_T
        live.r_TD.addcmul_(dict_FD.index_select(0, k_T).float(), coef_T[:, None], value=-1.0)
        if live.corr_TF is not None and gram_FF is not None:
            rows = None if rows_TF is None else rows_TF[: len(k_T)]
            _subtract_gram_rows(live.corr_TF, gram_FF, k_T, coef_T, rows)
        if stop_loss is not None and step + 1 < l0 and live.stop(r_TD):
            break
    live.write_back(r_TD)
    return Pursuit(atoms_TL, coefs_TL, r_TD)


class _Live:
    """The tokens of a block still being pursued, for ``stop_loss``.

    A token whose relative loss falls to ``stop_loss`` stops (its coefficient is masked to 0
    from then on). Its rows are dropped from the working tensors once a quarter of them have
    stopped, so the per-step passes shrink with the live set while a compaction (one copy of
    the live rows) happens at most ~log_{4/3}(T) times per block.
    """

    def __init__(self, r_TD: Tensor, corr_TF: Tensor | None, stop_loss: float | None):
        self.r_TD, self.corr_TF = r_TD, corr_TF
        self.index_T = torch.arange(r_TD.shape[0], device=r_TD.device)
        self.running_T = torch.ones(r_TD.shape[0], dtype=torch.bool, device=r_TD.device)
        self.floor_T = None if stop_loss is None else stop_loss * (r_TD * r_TD).sum(1)

    def stop(self, out_TD: Tensor) -> bool:
        """Mark tokens at or below the loss floor; compact; True when none is left."""
        assert self.floor_T is not None
        self.running_T &= (self.r_TD * self.r_TD).sum(1) > self.floor_T
        left = int(self.running_T.sum())
        if left > 0.75 * len(self.running_T):
            return False
        self.write_back(out_TD)
        keep_T = self.running_T.nonzero().squeeze(1)
        self.index_T, self.floor_T = self.index_T[keep_T], self.floor_T[keep_T]
        self.r_TD = self.r_TD[keep_T]
        if self.corr_TF is not None:
            self.corr_TF = self.corr_TF[keep_T]
        self.running_T = self.running_T[keep_T]
        return left == 0

    def write_back(self, out_TD: Tensor) -> None:
        """Copy the live residuals into the block's output (they are one tensor until the
        first compaction)."""
        if self.r_TD is not out_TD:
            out_TD[self.index_T] = self.r_TD


def _subtract_gram_rows(
    corr_TF: Tensor, gram_FF: Tensor, k_T: Tensor, coef_T: Tensor, rows_TF: Tensor | None
) -> None:
    """``corr[t] -= coef[t] * G[k[t]]``; on CPU as a one-entry-per-row CSR matmul (no copy)."""
    if rows_TF is None:
        n = k_T.shape[0]
        crow_T1 = torch.arange(n + 1, device=k_T.device)
        with warnings.catch_warnings():  # torch flags every CSR tensor as beta
            warnings.simplefilter("ignore", UserWarning)
            picks_TF = torch.sparse_csr_tensor(
                crow_T1, k_T, coef_T, (n, gram_FF.shape[0]), check_invariants=False
            )
        corr_TF.addmm_(picks_TF, gram_FF, alpha=-1.0)
        return
    torch.index_select(gram_FF, 0, k_T, out=rows_TF)
    corr_TF.addcmul_(rows_TF, coef_T[:, None], value=-1.0)


def _gp_chunk(x_TD: Tensor, dict_FD: Tensor, l0: int, nonneg: bool, max_bytes: int) -> Pursuit:
    x32_TD = x_TD.float()
    r_TD = x32_TD.clone()
    n, d = r_TD.shape
    atoms_TL = torch.full((n, l0), -1, dtype=torch.long, device=r_TD.device)
    coefs_TL = torch.zeros(n, l0, dtype=torch.float32, device=r_TD.device)
    support_TLD = torch.zeros(n, l0, d, dtype=torch.float32, device=r_TD.device)
    for step in range(l0):
        k_T, best_T = _best_streamed(r_TD, dict_FD, nonneg, max_bytes)
        new_T = (best_T != 0) & ~(atoms_TL == k_T[:, None]).any(dim=1)
        atoms_TL[:, step] = torch.where(new_T, k_T, -1)
        support_TLD[:, step] = dict_FD.index_select(0, k_T).float() * new_T[:, None]
        g_TL = torch.einsum("tld,td->tl", support_TLD, r_TD)
        c_TD = torch.einsum("tl,tld->td", g_TL, support_TLD)
        a_T = _step_size((g_TL * g_TL).sum(1), (c_TD * c_TD).sum(1))
        coefs_TL.add_(a_T[:, None] * g_TL)
        if nonneg:
            coefs_TL.clamp_(min=0.0)
            r_TD = x32_TD - torch.einsum("tl,tld->td", coefs_TL, support_TLD)
        else:
            r_TD.addcmul_(c_TD, a_T[:, None], value=-1.0)
    return Pursuit(atoms_TL, coefs_TL, r_TD)


def _step_size(num_T: Tensor, den_T: Tensor) -> Tensor:
    return torch.where(den_T > 0, num_T / den_T.clamp(min=1e-30), torch.zeros_like(num_T))


ARGMAX_CHUNK = 256
"""Columns per chunk in ``_extreme``: a values-only reduction per chunk, then an indexed one
inside the winning chunk. torch's indexed ``max(dim=1)`` is ~10x slower per element than
``amax`` on CPU (1.7 ms vs 0.13 ms on a 256 x 16,384 block), and the argmax of every pursuit
step is one such pass."""


def _extreme(corr_TF: Tensor, largest: bool) -> tuple[Tensor, Tensor]:
    """``corr.max(dim=1)`` (or ``min``): value and index of its first occurrence per row."""
    n, f = corr_TF.shape
    groups = f // ARGMAX_CHUNK
    if groups < 2 or corr_TF.stride(1) != 1:
        return corr_TF.max(dim=1) if largest else corr_TF.min(dim=1)
    main_TGC = corr_TF[:, : groups * ARGMAX_CHUNK].view(n, groups, ARGMAX_CHUNK)
    peaks_TG = main_TGC.amax(-1) if largest else main_TGC.amin(-1)
    g_T = peaks_TG.argmax(-1) if largest else peaks_TG.argmin(-1)  # first winning chunk
    rows_T = torch.arange(n, device=corr_TF.device)
    chunk_TC = main_TGC[rows_T, g_T]
    v_T, j_T = chunk_TC.max(dim=1) if largest else chunk_TC.min(dim=1)
    k_T = g_T * ARGMAX_CHUNK + j_T
    if groups * ARGMAX_CHUNK < f:  # the tail wins only when strictly better (first occurrence)
        tail_TR = corr_TF[:, groups * ARGMAX_CHUNK:]
        tv_T, tk_T = tail_TR.max(dim=1) if largest else tail_TR.min(dim=1)
        tail_wins_T = tv_T > v_T if largest else tv_T < v_T
        v_T = torch.where(tail_wins_T, tv_T, v_T)
        k_T = torch.where(tail_wins_T, tk_T + groups * ARGMAX_CHUNK, k_T)
    return v_T, k_T


def _best(corr_TF: Tensor, nonneg: bool) -> tuple[Tensor, Tensor]:
    """Index and signed value of the best correlation per row (0 when nothing qualifies)."""
    vmax_T, kmax_T = _extreme(corr_TF, largest=True)
    if nonneg:
        return kmax_T, vmax_T.clamp(min=0.0)
    vmin_T, kmin_T = _extreme(corr_TF, largest=False)
    use_min_T = -vmin_T > vmax_T
    return torch.where(use_min_T, kmin_T, kmax_T), torch.where(use_min_T, vmin_T, vmax_T)


def _best_streamed(
    r_TD: Tensor, dict_FD: Tensor, nonneg: bool, max_bytes: int
) -> tuple[Tensor, Tensor]:
    """``_best(r @ D.T)`` without holding more than one chunk of atoms' correlations."""
    step = _atom_chunk(dict_FD, max_bytes, rows=r_TD.shape[0])
    best_k_T: Tensor | None = None
    best_v_T = torch.zeros(r_TD.shape[0], dtype=torch.float32, device=r_TD.device)
    for i in range(0, dict_FD.shape[0], step):
        k_T, v_T = _best(r_TD @ dict_FD[i : i + step].float().T, nonneg)
        if best_k_T is None:
            best_k_T, best_v_T = k_T + i, v_T
            continue
        better_T = v_T.abs() > best_v_T.abs()
        best_k_T = torch.where(better_T, k_T + i, best_k_T)
        best_v_T = torch.where(better_T, v_T, best_v_T)
    assert best_k_T is not None
    return best_k_T, best_v_T


def _correlate(r_TD: Tensor, dict_FD: Tensor, max_bytes: int) -> Tensor:
    """fp32 ``r @ D.T``, upcasting the dictionary one chunk of atoms at a time if needed."""
    if dict_FD.dtype == torch.float32:
        return r_TD @ dict_FD.T
    out_TF = torch.empty(r_TD.shape[0], dict_FD.shape[0], dtype=torch.float32, device=r_TD.device)
    step = _atom_chunk(dict_FD, max_bytes)
    for i in range(0, dict_FD.shape[0], step):
        out_TF[:, i : i + step] = r_TD @ dict_FD[i : i + step].float().T
    return out_TF


# --- screened kernels (top-M candidates per token) -------------------------------------


def _screened(
    x_ND: Tensor,
    dict_FD: Tensor,
    l0: int,
    nonneg: bool,
    gram_FF: Tensor | None,
    m: int,
    max_bytes: int,
    kind: str,
) -> Pursuit:
    per_token = dict_FD.shape[0] + l0 * m + (0 if gram_FF is not None else m * dict_FD.shape[1])
    parts = []
    for x_TD in token_chunks(x_ND, per_token, max_bytes):
        x32_TD = x_TD.float()
        corr_TF = _correlate(x32_TD, dict_FD, max_bytes)
        score_TF = corr_TF if nonneg else corr_TF.abs()
        cand_TM = score_TF.topk(m, dim=1, sorted=False).indices
        corr_TM = corr_TF.gather(1, cand_TM)
        del corr_TF, score_TF
        rows = _GramRows(cand_TM, dict_FD, gram_FF)
        run = _local_mp if kind == "mp" else _local_gp
        slots_TL, coefs_TL = run(corr_TM, rows, l0, nonneg)
        atoms_TL = torch.where(slots_TL >= 0, cand_TM.gather(1, slots_TL.clamp(min=0)), -1)
        recon_TD = _decode_sparse(atoms_TL, coefs_TL, dict_FD)
        parts.append(Pursuit(atoms_TL, coefs_TL, x32_TD - recon_TD))
    return _cat(parts)


class _GramRows:
    """``<d_k, d_c>`` for one chosen candidate ``k`` per token against all its candidates."""

    def __init__(self, cand_TM: Tensor, dict_FD: Tensor, gram_FF: Tensor | None):
        self.cand_TM, self.gram_FF = cand_TM, gram_FF
        self.atoms_TMD = None if gram_FF is not None else dict_FD[cand_TM].float()

    def __call__(self, j_T: Tensor) -> Tensor:
        k_T = self.cand_TM.gather(1, j_T[:, None])
        if self.gram_FF is not None:  # may be a strided view (a growing build's Gram buffer)
            return self.gram_FF[k_T, self.cand_TM]
        assert self.atoms_TMD is not None
        chosen_TD = self.atoms_TMD[torch.arange(len(j_T), device=j_T.device), j_T]
        return torch.einsum("tmd,td->tm", self.atoms_TMD, chosen_TD)


def _local_mp(corr_TM: Tensor, rows: _GramRows, l0: int, nonneg: bool) -> tuple[Tensor, Tensor]:
    n = corr_TM.shape[0]
    slots_TL = torch.full((n, l0), -1, dtype=torch.long, device=corr_TM.device)
    coefs_TL = torch.zeros(n, l0, dtype=torch.float32, device=corr_TM.device)
    for step in range(l0):
        j_T, coef_T = _best(corr_TM, nonneg)
        slots_TL[:, step] = torch.where(coef_T != 0, j_T, -1)
        coefs_TL[:, step] = coef_T
        corr_TM.addcmul_(rows(j_T), coef_T[:, None], value=-1.0)
    return slots_TL, coefs_TL


def _local_gp(corr_TM: Tensor, rows: _GramRows, l0: int, nonneg: bool) -> tuple[Tensor, Tensor]:
    n, m = corr_TM.shape
    corr0_TM = corr_TM.clone()
    slots_TL = torch.full((n, l0), -1, dtype=torch.long, device=corr_TM.device)
    coefs_TL = torch.zeros(n, l0, dtype=torch.float32, device=corr_TM.device)
    rows_TLM = torch.zeros(n, l0, m, dtype=torch.float32, device=corr_TM.device)
    for step in range(l0):
        j_T, best_T = _best(corr_TM, nonneg)
        new_T = (best_T != 0) & ~(slots_TL == j_T[:, None]).any(dim=1)
        slots_TL[:, step] = torch.where(new_T, j_T, -1)
        rows_TLM[:, step] = rows(j_T) * new_T[:, None]
        g_TL = corr_TM.gather(1, slots_TL.clamp(min=0)) * (slots_TL >= 0)
        gG_TM = torch.einsum("tl,tlm->tm", g_TL, rows_TLM)
        cc_T = (gG_TM.gather(1, slots_TL.clamp(min=0)) * g_TL).sum(1)
        a_T = _step_size((g_TL * g_TL).sum(1), cc_T)
        coefs_TL.add_(a_T[:, None] * g_TL)
        if nonneg:
            coefs_TL.clamp_(min=0.0)
            corr_TM = corr0_TM - torch.einsum("tl,tlm->tm", coefs_TL, rows_TLM)
        else:
            corr_TM = corr_TM - a_T[:, None] * gG_TM
    return slots_TL, coefs_TL


def _decode_sparse(atoms_TL: Tensor, coefs_TL: Tensor, dict_FD: Tensor) -> Tensor:
    valid_TL = atoms_TL >= 0
    atoms_TLD = dict_FD[atoms_TL.clamp(min=0)].float()
    return torch.einsum("tl,tld->td", coefs_TL * valid_TL, atoms_TLD)


# --- plumbing --------------------------------------------------------------------------


def _check_inputs(x_ND: Tensor, dict_FD: Tensor, l0: int, candidates: int | None) -> None:
    if x_ND.ndim != 2 or dict_FD.ndim != 2:
        raise ValueError(
            f"pursuit expects 2-d activations and dictionary, got shapes "
            f"{tuple(x_ND.shape)} and {tuple(dict_FD.shape)}"
        )
    if x_ND.shape[1] != dict_FD.shape[1]:
        raise ValueError(
            f"activation width {x_ND.shape[1]} differs from dictionary width {dict_FD.shape[1]}"
        )
    if not 1 <= l0 <= dict_FD.shape[0]:
        raise ValueError(
            f"target_l0={l0} must be between 1 and the dictionary size {dict_FD.shape[0]}"
        )
    if candidates is not None and candidates < l0:
        raise ValueError(f"candidates={candidates} must be at least target_l0={l0}")


def _check_correlations(
    corr_NF: Tensor, x_ND: Tensor, dict_FD: Tensor, gram_FF: Tensor | None, candidates: int | None
) -> None:
    if gram_FF is None or candidates is not None:
        raise ValueError("correlations_NF is only used by the Gram path (gram_FF, no candidates)")
    want = (x_ND.shape[0], dict_FD.shape[0])
    if tuple(corr_NF.shape) != want or corr_NF.dtype != torch.float32:
        raise ValueError(
            f"correlations_NF must be fp32 of shape {want} (x @ dict.T), got "
            f"{corr_NF.dtype} {tuple(corr_NF.shape)}"
        )


def token_chunks(x_ND: Tensor, floats_per_token: int, max_bytes: int) -> list[Tensor]:
    """Consecutive row slices of ``x_ND`` whose ``floats_per_token`` fp32 values per row fit
    in ``max_bytes`` (at least one row each)."""
    size = max(1, max_bytes // (4 * max(1, floats_per_token)))
    return list(x_ND.split(size)) if x_ND.shape[0] else [x_ND]


def _atom_chunk(dict_FD: Tensor, max_bytes: int, rows: int | None = None) -> int:
    per_atom = 4 * max(dict_FD.shape[1], rows or 0)
    return max(1, min(dict_FD.shape[0], max_bytes // per_atom))


def _cat(parts: list[Pursuit]) -> Pursuit:
    if len(parts) == 1:
        return parts[0]
    return Pursuit(*(torch.cat(cols) for cols in zip(*parts, strict=True)))
