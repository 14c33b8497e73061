"""Data-parallel SAE training over sae_lens's ``SAETrainer`` on torch.distributed.

Every rank holds the whole SAE and its Adam state, reads the same seeded stream of global batches
and keeps its slice of each (rank ``r`` of ``N`` takes rows ``r*B/N .. (r+1)*B/N`` of a global
batch of ``B``), so the data order is the single-process one. The seams, all inside sae_lens's
own ``SAETrainer.step``:

- gradients: every loss sae_lens trains with (MSE, AuxK, L1, JumpReLU's L0 and pre-activation
  losses) is a mean over tokens, so the gradient of the global batch is the mean of the ranks'
  gradients. :func:`averaged_gradients` all-reduces each parameter's gradient as soon as backward
  has accumulated it (``register_post_accumulate_grad_hook``), which is before sae_lens's
  ``clip_grad_norm_`` and ``optimizer.step``: every rank clips and steps the same averaged
  gradient, and the weights stay equal on every rank.
- dead latents: :func:`sync_dead_latents` makes ``n_forward_passes_since_fired`` the MIN over
  ranks (a latent fired in the global batch when it fired on any rank) and adds every rank's
  ``act_freq_scores`` increment, after each step, so AuxK's dead mask and the logged dead
  fraction are those of the global batch.
- counts and logs: ``n_training_samples`` counts global tokens; the loss is the mean over ranks
  (the global loss) every step, and :func:`whole_batch` gathers a logging step's output so the
  log line is the single-process one.

- BatchTopK (and Matryoshka BatchTopK) keep the top ``k x B`` activations of the whole batch:
  :func:`global_batch_topk` makes the selection global (each rank's top ``k x B`` candidates are
  gathered, the ``k x B``-th largest of them is the cut every rank applies) and the threshold's
  moving average takes the smallest kept activation over all ranks.

Latents are not sharded: each rank holds the full dictionary.

Legend: B global batch, b rows of one rank, D model width, F latents.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from sae_lens import BatchTopKTrainingSAE
from sae_lens.saes.sae import TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer

from _sae_flux_shared.usererror import UserError
from sae_flux import distributed


def check_data_parallel(batch_size: int, world_size: int) -> None:
    """Refuse a global batch that does not split evenly over ``world_size`` ranks.

    Every rank calls it with the same (checked) settings, so every rank refuses alike.

    Example:
        >>> check_data_parallel(4096, world_size=2)
        >>> check_data_parallel(4095, world_size=2)
        Traceback (most recent call last):
        ...
        _sae_flux_shared.usererror.UserError: the batch size 4095 does not divide into 2 ranks: give a multiple of 2 (e.g. 4096)
    """
    if world_size > 1 and batch_size % world_size:
        nearest = (batch_size // world_size + 1) * world_size
        raise UserError(f"the batch size {batch_size} does not divide into {world_size} ranks: "
                        f"give a multiple of {world_size} (e.g. {nearest})")


def rank_slices(batches: Iterator[torch.Tensor], ranks: distributed.Ranks) -> Iterator[torch.Tensor]:
    """This rank's rows of each global batch (the batch itself for one process)."""
    for batch_BD in batches:
        if ranks.world_size == 1:
            yield batch_BD
            continue
        rows = batch_BD.shape[0] // ranks.world_size
        yield batch_BD[ranks.rank * rows : (ranks.rank + 1) * rows]


@contextmanager
def averaged_gradients(module: torch.nn.Module) -> Iterator[None]:
    """Average each parameter's gradient over the ranks as soon as backward has accumulated it.

    A no-op for one process. Every rank runs the same graph (same code, same global dead-latent
    mask), so the all-reduces come in the same order on every rank.
    """
    if not distributed.active():
        yield
        return
    world = dist.get_world_size()

    def average(param: torch.Tensor) -> None:
        assert param.grad is not None
        dist.all_reduce(param.grad)
        param.grad.div_(world)

    handles = [p.register_post_accumulate_grad_hook(average) for p in module.parameters() if p.requires_grad]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class GlobalBatchTopK(torch.nn.Module):
    """sae_lens's ``BatchTopK`` over the global batch: keeps this rank's activations at or above
    the ``int(k x B)``-th largest ReLU activation of all ranks (B = rows of all ranks)."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, hidden_pre_bF: torch.Tensor) -> torch.Tensor:
        acts_bF = hidden_pre_bF.relu()
        flat = acts_bF.detach().flatten()
        keep = int(self.k * acts_bF.shape[:-1].numel() * dist.get_world_size())
        candidates = flat.topk(min(keep, flat.numel())).values  # the same length on every rank
        parts = [torch.empty_like(candidates) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, candidates.contiguous())
        cut = torch.cat(parts).topk(keep).values[-1]
        return acts_bF * (acts_bF >= cut)


@contextmanager
def global_batch_topk(sae: torch.nn.Module) -> Iterator[None]:
    """Make a BatchTopK SAE's selection and threshold update global while training (a no-op for
    one process or another architecture)."""
    if not distributed.active() or not isinstance(sae, BatchTopKTrainingSAE):
        yield
        return
    activation, update = sae.activation_fn, sae.update_topk_threshold
    lr = sae.cfg.topk_threshold_lr

    @torch.no_grad()
    def update_globally(acts_topk: torch.Tensor) -> None:
        positive = acts_topk[acts_topk > 0]
        smallest = positive.min().reshape(1) if positive.numel() else acts_topk.new_full((1,), math.inf)
        dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
        if math.isfinite(float(smallest)):
            min_positive = smallest[0].to(sae.topk_threshold.dtype)
            sae.topk_threshold = (1 - lr) * sae.topk_threshold + lr * min_positive

    sae.activation_fn = GlobalBatchTopK(sae.cfg.k)
    sae.update_topk_threshold = update_globally  # type: ignore[method-assign]
    try:
        yield
    finally:
        sae.activation_fn = activation
        sae.update_topk_threshold = update  # type: ignore[method-assign]


def step(trainer: SAETrainer[Any, Any], batch_bD: torch.Tensor, global_rows: int) -> TrainStepOutput:
    """sae_lens's ``trainer.step`` on this rank's slice, made global: counts, dead latents, loss.

    Call it inside :func:`averaged_gradients`. The returned ``loss`` is the global batch's (the
    mean over ranks) and has no graph; the other fields are this rank's.
    """
    if not distributed.active():
        return trainer.step(batch_bD)
    freq_before = trainer.act_freq_scores.clone()
    output = trainer.step(batch_bD)
    trainer.n_training_samples += global_rows - batch_bD.shape[0]
    sync_dead_latents(trainer, freq_before)
    return dataclasses.replace(output, loss=_mean(output.loss.detach()))


@torch.no_grad()
def sync_dead_latents(trainer: SAETrainer[Any, Any], freq_before: torch.Tensor) -> None:
    """Make the dead-latent statistics those of the global batch on every rank."""
    dist.all_reduce(trainer.n_forward_passes_since_fired, op=dist.ReduceOp.MIN)
    increment = trainer.act_freq_scores - freq_before
    dist.all_reduce(increment)
    trainer.act_freq_scores = freq_before + increment


def _mean(value: torch.Tensor) -> torch.Tensor:
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def _gather_rows(value: torch.Tensor) -> torch.Tensor:
    value = value.detach()
    if value.is_sparse:
        value = value.to_dense()
    parts = [torch.empty_like(value) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, value.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def whole_batch(output: TrainStepOutput) -> TrainStepOutput:
    """The step output of the global batch, on every rank (the output itself for one process):
    rows gathered in rank order, each loss the mean over ranks. Costs B x F values: call it on
    logging steps only, on every rank."""
    if not distributed.active():
        return output
    losses = {name: _mean(value) if isinstance(value, torch.Tensor) else value
              for name, value in output.losses.items()}
    return dataclasses.replace(
        output,
        sae_in=_gather_rows(output.sae_in),
        sae_out=_gather_rows(output.sae_out),
        feature_acts=_gather_rows(output.feature_acts),
        hidden_pre=_gather_rows(output.hidden_pre),
        losses=losses,
    )


@torch.no_grad()
def broadcast_state(trainer: SAETrainer[Any, Any]) -> None:
    """Rank 0's SAE weights and activation normalisation on every rank (a no-op for one process)."""
    if not distributed.active():
        return
    for tensor in [*trainer.sae.parameters(), *trainer.sae.buffers()]:
        dist.broadcast(tensor.data, src=0)
    whitening = trainer.activation_scaler.whitening
    on_cpu = whitening.to(torch.device("cpu")) if whitening is not None else None  # pickled to every rank
    trainer.activation_scaler.whitening = distributed.from_main(on_cpu)
