"""ITDA construction, Algorithm 1 of Leask, Nanda, Al Moubayed (ICML 2025, arXiv 2505.17769).

The algorithm on its own: the growing dictionary (:class:`BuildState`) and one pass over a
stream (:func:`grow`), returning whatever its ``finish`` makes of the state. It sits below
:mod:`itda.model`: :meth:`itda.model.ITDA.build` and :func:`itda.build.build` pass
:meth:`itda.model.ITDA.from_build_state` as ``finish``.

Seed the dictionary with a sample of the first batch; then for every batch encode each
activation with the current dictionary and add, normalised, every activation whose relative
reconstruction loss ``||x - x_hat||^2 / ||x||^2`` exceeds ``loss_threshold``. Optionally drop
a candidate whose cosine with an atom (or an earlier candidate) exceeds ``dedup_cosine``, and
stop at ``max_atoms``. Everything happens in the normalised space ``(x - mean) / std`` whose
statistics come from the first batch. The process is deterministic for a fixed ``seed``.

Shape legend: N tokens in a batch, D model width, F atoms, K candidate atoms of a batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from itda import pursuit
from itda.build_config import STREAM_KEY, BuildConfig
from itda.provenance import Provenance
from itda.pursuit import GRAM_MAX_BYTES

if TYPE_CHECKING:
    from itda.model import ITDA

Finish = Callable[["BuildState", BuildConfig, "dict[str, Any] | None", bool], "ITDA"]
"""``finish(state, config, metadata, allow_small)``: the dictionary of a state
(:meth:`itda.model.ITDA.from_build_state`, passed in: this module sits below the model)."""

logger = logging.getLogger(__name__)


class ActivationBatch(NamedTuple):
    """A batch of activations with optional per-row provenance (see ``itda.provenance``).

    Example: 8 tokens of width 4 from prompt 0, positions 0..7 (what ``itda.build`` reads):

        >>> import torch
        >>> batch = ActivationBatch(torch.randn(8, 4), {"prompt": torch.zeros(8, dtype=torch.long),
        ...                         "token": torch.arange(8)}, hook="blocks.6.hook_resid_post",
        ...                         source="my-texts")
        >>> batch.acts_ND.shape, batch.source
        (torch.Size([8, 4]), 'my-texts')
    """

    acts_ND: Tensor
    """N activations of width D (one row per token)."""
    prov: dict[str, Tensor] | None = None
    """Per-row int64 columns named in ``itda.provenance.INT_COLUMNS`` (``prompt``, ``token``,
    ``step``, ``h``, ``w``) plus float ``timestep``; absent columns are recorded as unknown.
    None: the token is the row's index in the stream."""
    hook: str = ""
    """Hook point the activations were read at (recorded per atom)."""
    source: str = "stream"
    """Name of the data source (e.g. a prompt file's hash), recorded per atom for ``jaccard``."""


class BuildError(ValueError):
    """A bad batch stopped the build; ``partial`` holds the dictionary built so far.

    Example:
        >>> import torch, itda
        >>> good, bad = torch.randn(64, 4), torch.full((64, 4), float("nan"))
        >>> try:
        ...     itda.ITDA.build([good, bad], target_l0=2, loss_threshold=0.5, progress=False)
        ... except itda.BuildError as err:
        ...     print(err.partial is not None)
        True
    """

    def __init__(self, message: str, partial: ITDA | None):
        super().__init__(message)
        self.partial = partial


def _grown(buffer: Tensor, needed: int, limit: int) -> int:
    """Capacity for ``needed`` rows: double the buffer, capped by ``limit``."""
    return max(needed, min(2 * buffer.shape[0], limit))


class BuildState:
    """The growing dictionary: unit atoms, their Gram matrix, provenance, statistics.

    Atoms and the Gram matrix live in buffers that grow geometrically up to ``max_atoms``
    (``atoms_FD`` is a contiguous view of the first rows, ``gram_FF`` the leading square of
    the Gram buffer, a strided view the pursuit kernels read in place). Adding a batch's atoms
    writes only the new rows and columns; the old ones are copied only when a buffer grows,
    about log2(size) times per build instead of once per batch (a 1 GiB copy at 16k atoms).
    """

    def __init__(self, mean_D: Tensor, std_D: Tensor, atoms_FD: Tensor, prov: Provenance,
                 max_atoms: int):
        self.mean_D, self.std_D = mean_D, std_D
        self.max_atoms = max_atoms
        self._atoms_CD = atoms_FD.clone()
        self.size = int(atoms_FD.shape[0])
        self.prov = prov
        self.tokens_seen = 0
        self.batches_seen = 0
        self.batch_tokens = 0
        """The most tokens of one batch: the build adds a batch's badly reconstructed tokens at once,
        so this sets the dictionary's size as much as loss_threshold does (recorded)."""
        self._gram_CC: Tensor | None = None
        if 4 * self.size**2 <= GRAM_MAX_BYTES:
            self._gram_CC = pursuit.gram_matrix(atoms_FD)

    @property
    def atoms_FD(self) -> Tensor:
        return self._atoms_CD[: self.size]

    def tensors(self) -> dict[str, Tensor]:
        """Everything a checkpoint needs to continue bit for bit (the Gram matrix included)."""
        out = {"atoms_FD": self.atoms_FD, "mean_D": self.mean_D, "std_D": self.std_D,
               "atoms_capacity": torch.tensor(self._atoms_CD.shape[0])}
        if self._gram_CC is not None:
            out["gram_FF"] = self.gram_FF.contiguous()  # type: ignore[union-attr]
            out["gram_capacity"] = torch.tensor(self._gram_CC.shape[0])
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prov: Provenance, max_atoms: int,
                     tokens_seen: int, batches_seen: int) -> BuildState:
        """The state :meth:`tensors` saved, in buffers of the same capacity (same arithmetic)."""
        atoms_FD = tensors["atoms_FD"]
        state = cls(tensors["mean_D"], tensors["std_D"], atoms_FD[:0], prov, max_atoms)
        state._atoms_CD = atoms_FD.new_empty(int(tensors["atoms_capacity"]), atoms_FD.shape[1])
        state._atoms_CD[: len(atoms_FD)] = atoms_FD
        state.size = int(atoms_FD.shape[0])
        state._gram_CC = None
        if "gram_FF" in tensors:
            cap = int(tensors["gram_capacity"])
            state._gram_CC = atoms_FD.new_empty(cap, cap)
            state._gram_CC[: state.size, : state.size] = tensors["gram_FF"]
        state.tokens_seen, state.batches_seen = tokens_seen, batches_seen
        return state

    @property
    def gram_FF(self) -> Tensor | None:
        return None if self._gram_CC is None else self._gram_CC[: self.size, : self.size]

    def add(self, new_KD: Tensor, prov: Provenance, cross_KF: Tensor | None = None) -> None:
        """Append unit atoms; ``cross_KF`` = ``new_KD @ atoms_FD.T`` when the caller has it."""
        f, n = self.size, self.size + len(new_KD)
        if self._gram_CC is not None and 4 * n**2 <= GRAM_MAX_BYTES:
            if n > self._gram_CC.shape[0]:
                limit = min(self.max_atoms, math.isqrt(GRAM_MAX_BYTES // 4))
                cap = _grown(self._gram_CC, n, limit)
                grown_CC = self._gram_CC.new_empty(cap, cap)
                grown_CC[:f, :f] = self._gram_CC[:f, :f]
                self._gram_CC = grown_CC
            if cross_KF is None:
                cross_KF = new_KD @ self.atoms_FD.T
            self._gram_CC[:f, f:n] = cross_KF.T
            self._gram_CC[f:n, :f] = cross_KF
            self._gram_CC[f:n, f:n] = new_KD @ new_KD.T
        else:
            self._gram_CC = None
        if n > self._atoms_CD.shape[0]:
            grown_CD = self._atoms_CD.new_empty(_grown(self._atoms_CD, n, self.max_atoms),
                                                self._atoms_CD.shape[1])
            grown_CD[:f] = self.atoms_FD
            self._atoms_CD = grown_CD
        self._atoms_CD[f:n] = new_KD
        self.size = n
        self.prov = self.prov.concat(prov)


def grow(
    batches: Iterable[Tensor | ActivationBatch | tuple],
    config: BuildConfig,
    finish: Finish,
    *,
    resume: ITDA | BuildState | None = None,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
    on_batch: Callable[[ITDA], None] | None = None,
    checkpoint: Callable[[BuildState], object] | None = None,
    checkpoint_every: int = 0,
) -> ITDA:
    """One pass of Algorithm 1 over ``batches``; the result is ``finish`` of the final state
    (the arguments as :func:`itda.build.build` documents them; a ``resume`` that is no
    :class:`BuildState` is a dictionary whose atoms and statistics are kept).

    Example:
        >>> import torch
        >>> from itda.model import ITDA
        >>> d = grow(torch.randn(512, 8).split(128), BuildConfig(target_l0=2, loss_threshold=0.5),
        ...          ITDA.from_build_state, progress=False)
        >>> d.cfg.d_in, d.cfg.metadata.itda_build["batches_seen"]
        (8, 4)
    """
    dictionary = None if isinstance(resume, BuildState) else resume
    state = resume if isinstance(resume, BuildState) else None
    if dictionary is not None:
        state = state_from(dictionary, config.max_atoms)
    seen_any = False
    bar = tqdm(batches, desc="itda build", unit="batch", disable=not progress)
    for index, raw in enumerate(bar):
        batch = _as_batch(raw)
        _validate(batch, index, state, config, metadata, finish)
        seen_any = True
        if state is None:
            state = _seed(batch, config)
        added = _step(state, batch, config)
        state.batches_seen += 1
        state.tokens_seen += batch.acts_ND.shape[0]
        state.batch_tokens = max(state.batch_tokens, int(batch.acts_ND.shape[0]))
        bar.set_postfix(atoms=state.size, added=added)
        if on_batch is not None:
            on_batch(finish(state, config, metadata, True))
        if state.size >= config.max_atoms:
            logger.info("dictionary reached max_atoms=%d; stopping", config.max_atoms)
            break
        if checkpoint is not None and checkpoint_every and state.batches_seen % checkpoint_every == 0:
            checkpoint(state)
    if dictionary is not None and not seen_any:
        logger.info("the resumed dictionary has read the whole stream already: nothing to add")
        return dictionary
    if state is None:
        raise ValueError("empty activation stream: the batches iterable yielded no activations")
    return finish(state, config, metadata, False)


def _as_batch(raw: Tensor | ActivationBatch | tuple) -> ActivationBatch:
    if isinstance(raw, ActivationBatch):
        return raw
    if isinstance(raw, Tensor):
        return ActivationBatch(raw)
    return ActivationBatch(*raw)


def _validate(
    batch: ActivationBatch,
    index: int,
    state: BuildState | None,
    config: BuildConfig,
    metadata: dict[str, Any] | None,
    finish: Finish,
) -> None:
    problem = _problem(batch.acts_ND, index, state)
    if problem is not None:
        partial = None if state is None else finish(state, config, metadata, True)
        raise BuildError(problem, partial)


def _problem(acts: Tensor, index: int, state: BuildState | None) -> str | None:
    if acts.ndim != 2 or acts.shape[0] == 0:
        return f"batch {index} must be a non-empty (n, d) tensor, got shape {tuple(acts.shape)}"
    if state is not None and acts.shape[1] != state.atoms_FD.shape[1]:
        return (
            f"batch {index} has activation width {acts.shape[1]} but the dictionary "
            f"width is {state.atoms_FD.shape[1]}"
        )
    bad = int((~torch.isfinite(acts)).sum())
    if bad:
        return f"batch {index} contains {bad} non-finite (NaN or inf) values"
    return None


def _normalise(state: BuildState, acts_ND: Tensor) -> Tensor:
    return (acts_ND.float() - state.mean_D) / state.std_D


def _seed(batch: ActivationBatch, config: BuildConfig) -> BuildState:
    acts_ND = batch.acts_ND.float()
    d = acts_ND.shape[1]
    mean_D = acts_ND.mean(0) if config.normalization != "none" else torch.zeros(d)
    std_D = torch.ones(d)
    if config.normalization == "mean_std" and acts_ND.shape[0] > 1:
        std_D = acts_ND.std(0).clamp(min=1e-6)
    mean_D, std_D = mean_D.to(acts_ND.device), std_D.to(acts_ND.device)
    state = BuildState(mean_D, std_D, torch.zeros(0, d, device=acts_ND.device), Provenance.empty(),
                   config.max_atoms)
    gen = torch.Generator().manual_seed(config.seed)
    assert config.seed_atoms is not None
    order = torch.randperm(acts_ND.shape[0], generator=gen)[: config.seed_atoms].sort().values
    x_KD = _normalise(state, acts_ND[order.to(acts_ND.device)])
    order = order[(x_KD.norm(dim=1) > 0).cpu()]
    unit_KD = torch.nn.functional.normalize(_normalise(state, acts_ND[order]), dim=1)
    keep = _dedup_mask(unit_KD, None, config)
    state.add(unit_KD[keep], _batch_prov(batch, state).select(order[keep.cpu()]))
    return state


def _step(state: BuildState, batch: ActivationBatch, config: BuildConfig) -> int:
    """Encode one batch and add its badly reconstructed activations; returns how many."""
    x_ND = _normalise(state, batch.acts_ND)
    l0 = min(config.target_l0, state.size)
    cross_KF: Tensor | None = None
    if config.encoder == "mp" and config.candidates is None and state.gram_FF is not None:
        chosen, cross_KF = _select_exact_mp(state, x_ND, l0, config)
    else:
        chosen = _select(state, x_ND, l0, config)
    if len(chosen) == 0:
        return 0
    new_KD = torch.nn.functional.normalize(x_ND[chosen], dim=1)
    if cross_KF is None and config.dedup_cosine is not None:
        cross_KF = new_KD @ state.atoms_FD.T
    keep = _dedup_mask(new_KD, cross_KF, config)
    room = max(0, config.max_atoms - state.size)
    chosen, new_KD = chosen[keep][:room], new_KD[keep][:room]
    if cross_KF is not None:
        cross_KF = cross_KF[keep][:room]
    state.add(new_KD, _batch_prov(batch, state).select(chosen.cpu()), cross_KF)
    return int(len(chosen))


def _select_exact_mp(
    state: BuildState, x_ND: Tensor, l0: int, config: BuildConfig
) -> tuple[Tensor, Tensor]:
    """Rows to add, with their (unit-normalised) correlations with the current atoms.

    The exact pursuit starts from ``x @ atoms.T``; the rows of the chosen tokens, divided by
    their norms, are the new atoms' Gram entries with the old ones, so ``BuildState.add`` does
    not compute them again (at 16k atoms that was ~15% of a build). A token whose loss has
    fallen to the threshold is not pursued further: it cannot be added whatever the later
    steps do (matching pursuit never raises the loss).
    """
    atoms_FD = state.atoms_FD
    chosen, cross, start = [], [], 0
    for x_TD in pursuit.token_chunks(x_ND, atoms_FD.shape[0], pursuit.DEFAULT_MAX_BYTES):
        corr_TF = x_TD @ atoms_FD.T
        result = pursuit.matching_pursuit(
            x_TD,
            atoms_FD,
            l0,
            nonnegative=config.nonnegative,
            gram_FF=state.gram_FF,
            stop_loss=config.loss_threshold,
            correlations_NF=corr_TF,
        )
        pick = _poorly_reconstructed(x_TD, result.residual_ND, config.loss_threshold)
        chosen.append(pick + start)
        cross.append(corr_TF[pick] / x_TD[pick].norm(dim=1, keepdim=True))
        start += x_TD.shape[0]
    return torch.cat(chosen), torch.cat(cross)


def _select(state: BuildState, x_ND: Tensor, l0: int, config: BuildConfig) -> Tensor:
    """Rows to add, encoding with the configured pursuit (gradient, screened, or exact MP
    without a Gram matrix, which also stops at the threshold)."""
    candidates = None if config.candidates is None else max(config.candidates, l0)
    if config.encoder == "mp":
        result = pursuit.matching_pursuit(
            x_ND,
            state.atoms_FD,
            l0,
            nonnegative=config.nonnegative,
            gram_FF=state.gram_FF,
            candidates=candidates,
            stop_loss=config.loss_threshold if candidates is None else None,
        )
    else:
        result = pursuit.gradient_pursuit(
            x_ND,
            state.atoms_FD,
            l0,
            nonnegative=config.nonnegative,
            gram_FF=state.gram_FF if candidates is not None else None,
            candidates=candidates,
        )
    return _poorly_reconstructed(x_ND, result.residual_ND, config.loss_threshold)


def _poorly_reconstructed(x_ND: Tensor, residual_ND: Tensor, threshold: float) -> Tensor:
    """Indices of non-zero rows whose relative loss ``||r||^2 / ||x||^2`` exceeds threshold."""
    norm2_N = (x_ND * x_ND).sum(1)
    loss2_N = (residual_ND * residual_ND).sum(1)
    return ((loss2_N > threshold * norm2_N) & (norm2_N > 0)).nonzero().squeeze(1)


def _dedup_mask(new_KD: Tensor, cross_KF: Tensor | None, config: BuildConfig) -> Tensor:
    """Greedy in stream order: keep a candidate unless too close to an atom or a kept one.

    ``cross_KF`` holds the candidates' cosines with the current atoms (None: no atoms yet).
    """
    keep = torch.ones(len(new_KD), dtype=torch.bool, device=new_KD.device)
    thr = config.dedup_cosine
    if thr is None:
        return keep
    if cross_KF is not None and cross_KF.shape[1]:
        keep &= cross_KF.abs().amax(dim=1) <= thr
    close_KK = (new_KD @ new_KD.T).abs() > thr
    for k in range(len(new_KD)):
        if keep[k] and close_KK[k, k + 1 :].any():
            keep[k + 1 :] &= ~close_KK[k, k + 1 :]
    return keep


def _batch_prov(batch: ActivationBatch, state: BuildState) -> Provenance:
    return Provenance.for_batch(
        batch.acts_ND.shape[0], batch.source, batch.hook, batch.prov, state.tokens_seen
    )


def state_from(itda: ITDA, max_atoms: int) -> BuildState:
    """The state a saved or partial dictionary continues from (its atoms, statistics and counts)."""
    prov = itda.provenance if itda.provenance is not None else _unknown_prov(itda.cfg.d_sae)
    state = BuildState(
        itda.b_dec.detach().float().clone(),
        itda.act_std.detach().float().clone(),
        itda.atoms.float().clone(),
        prov,
        max_atoms,
    )
    build_meta = itda.cfg.metadata.get("itda_build", {}) or {}
    state.tokens_seen = int(build_meta.get("tokens_seen", 0))
    state.batches_seen = int(build_meta.get("batches_seen", 0))
    state.batch_tokens = int(build_meta.get("batch_tokens", 0))
    return state


def _unknown_prov(n: int) -> Provenance:
    return Provenance.for_batch(n, "unknown", "", {}, 0)


def build_metadata(state: BuildState, config: BuildConfig, metadata: dict[str, Any] | None,
                   allow_small: bool = False) -> dict[str, Any]:
    """The SAELens metadata of a finished build: the stream's, the hook read and ``itda_build``
    (the config and the counts a resume continues from); refuses a dictionary smaller than
    ``target_l0`` unless ``allow_small`` (a snapshot)."""
    if state.size < config.target_l0 and not allow_small:
        raise ValueError(
            f"target_l0={config.target_l0} is larger than the dictionary that was built "
            f"({state.size} atoms); lower loss_threshold or feed more activations"
        )
    meta = dict(metadata or {})
    stream = meta.pop(STREAM_KEY, None)
    hooks = [h for h in state.prov.hooks if h]
    if hooks and "hook_name" not in meta:
        meta["hook_name"] = hooks[0]
    meta["itda_build"] = asdict(config) | ({"stream": stream} if stream is not None else {}) | {
        "tokens_seen": state.tokens_seen,
        "batches_seen": state.batches_seen,
        "batch_tokens": state.batch_tokens,
    }
    return meta
