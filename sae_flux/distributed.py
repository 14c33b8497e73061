"""Several processes on torch.distributed: which rank this is, the process group, and checks that
every rank runs the same job.

A job launched by ``torchrun --nproc_per_node N`` (or ``accelerate launch``, or a SLURM script
that exports the same variables) finds ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT`` in its environment; :func:`process_group` starts the group from them (``gloo``
on CPU, ``nccl`` when CUDA is present) and ends it on exit. Without a launcher, a single process
gets ``Ranks(rank=0, world_size=1, local_rank=0)``, no group, and every helper here is a no-op, so
a job behaves exactly as it did before it knew about ranks.

Collectives time out (``timeout_s``, default 10 minutes, or ``SAE_FLUX_TIMEOUT_S`` seconds)
instead of hanging when a rank dies, and a bad setting found on one rank is found on every rank
(:func:`check_same`, :func:`on_every_rank`), so all ranks stop with the same one-line error.

Example:
    >>> with process_group() as ranks:   # no launcher: one process, no group
    ...     ranks
    Ranks(rank=0, world_size=1, local_rank=0)
    >>> check_same({"hook": "double.1.img"}, what="cache settings")   # nothing to compare
    >>> shard_owner(5, world_size=2)
    1
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar

import torch
import torch.distributed as dist

from _sae_flux_shared.commit import settings_differences
from _sae_flux_shared.usererror import UserError

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 600.0
"""Seconds a collective waits for the other ranks before it fails (a dead rank ends the job)."""
TIMEOUT_ENV = "SAE_FLUX_TIMEOUT_S"
"""Environment variable that sets the collective timeout of :func:`process_group` (seconds)."""


class Ranks(NamedTuple):
    """Where this process sits in the job."""

    rank: int
    """0 .. world_size - 1; rank 0 writes what is written once (manifests, final records)."""
    world_size: int
    """Number of processes of the job (1 without a launcher)."""
    local_rank: int
    """Rank on this machine: the GPU index a rank uses (``cuda:{local_rank}``)."""

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer (set by the launcher)") from None


def launched() -> bool:
    """Whether a launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    return _env_int("WORLD_SIZE", 1) > 1


def ranks() -> Ranks:
    """This process's rank and the world size: from the running group, else from the launcher's
    environment, else a single process."""
    local = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), local)
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} and WORLD_SIZE={world} from the launcher are inconsistent")
    return Ranks(rank, world, local)


def default_backend(device: str | None = None) -> str:
    """The backend for tensors on ``device``: ``nccl`` for a CUDA device, else ``gloo``; without a
    device, ``nccl`` when CUDA is present."""
    if device is None:
        return "nccl" if torch.cuda.is_available() else "gloo"
    return "nccl" if device.startswith("cuda") else "gloo"


def timeout_from_env() -> float:
    """The collective timeout: ``SAE_FLUX_TIMEOUT_S`` seconds, else :data:`DEFAULT_TIMEOUT_S`."""
    value = os.environ.get(TIMEOUT_ENV) or str(DEFAULT_TIMEOUT_S)
    try:
        seconds = float(value)
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise UserError(f"{TIMEOUT_ENV}={value!r} must be a positive number of seconds")
    return seconds


@contextmanager
def process_group(backend: str | None = None, timeout_s: float | None = None) -> Iterator[Ranks]:
    """Start the process group a launcher asked for (and end it on exit); a no-op for one process
    or when a group is already running (the caller's group is kept). ``timeout_s=None``:
    :func:`timeout_from_env`."""
    if not launched() or dist.is_initialized():
        yield ranks()
        return
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    ranks()  # RANK and WORLD_SIZE consistent, before waiting for the other ranks
    timeout_s = timeout_from_env() if timeout_s is None else timeout_s
    chosen = backend or default_backend()
    if chosen == "nccl":  # before the first collective: each rank on its own GPU, not all on cuda:0
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group(chosen, timeout=timedelta(seconds=timeout_s))
    logger.info("rank %d of %d started (%s)", dist.get_rank(), dist.get_world_size(), chosen)
    try:
        yield ranks()
    finally:
        dist.destroy_process_group()


def active() -> bool:
    """Whether collectives run (a group of more than one process is up)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (a no-op for one process)."""
    if active():
        dist.barrier()


def gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank; ``[value]`` alone."""
    if not active():
        return [value]
    found: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(found, value)
    return found


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself for one process)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same(settings: Mapping[str, Any], what: str = "settings") -> None:
    """Refuse, on every rank alike, when some rank was started with other ``settings`` than rank 0.

    Raises :class:`UserError` naming the first rank that differs and each differing key."""
    every = gather(dict(settings))
    for rank, other in enumerate(every[1:], start=1):
        diffs = settings_differences(every[0], other)
        if diffs:
            raise UserError(f"rank {rank} was started with other {what} than rank 0: " + "; ".join(diffs))


def all_ok(ok: bool, message: str) -> None:
    """Raise ``UserError(message)`` on every rank when any rank reports ``ok=False`` (so that no
    rank waits forever in the next collective for one that stopped)."""
    flags = gather(bool(ok))
    if not all(flags):
        bad = [str(rank) for rank, flag in enumerate(flags) if not flag]
        raise UserError(f"{message} (rank {', '.join(bad)})" if len(flags) > 1 else message)


def rank_threads() -> int:
    """torch's intra-op threads for one rank under a launcher: the cores this process may use over
    the ranks on this machine (``LOCAL_WORLD_SIZE``), at least one; 0 (keep torch's default) for a
    single process. For :func:`sae_flux.threads.torch_threads`; torchrun alone would leave
    ``OMP_NUM_THREADS=1``."""
    if not launched():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, _env_int("LOCAL_WORLD_SIZE", 1)))


def shard_owner(index: int, world_size: int) -> int:
    """The rank that writes work unit ``index``: round robin, so every rank gets a disjoint,
    deterministic share that does not depend on how fast the ranks run."""
    return index % world_size


def on_main(fn: Callable[[], T], errors: tuple[type[BaseException], ...] = (ValueError, OSError)) -> T:
    """``fn()`` run on rank 0 only, its (picklable) result on every rank; when it raises one of
    ``errors``, every rank raises that error (same type and message), so no rank waits for a rank
    that stopped. A plain call for one process."""
    if not active():
        return fn()
    outcome: tuple[bool, Any] = (True, None)
    if dist.get_rank() == 0:
        try:
            outcome = (True, fn())
        except errors as error:
            outcome = (False, error)
    ok, value = from_main(outcome)
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def on_every_rank(fn: Callable[[], T], errors: tuple[type[BaseException], ...] = (ValueError, OSError)) -> T:
    """``fn()`` on every rank; when it raises one of ``errors`` on some rank, every rank raises the
    error of the first rank that failed (a rank that cannot read its data stops the job at once,
    instead of leaving the others waiting in the next collective). A plain call for one process."""
    if not active():
        return fn()
    result: Any = None
    failure: BaseException | None = None
    try:
        result = fn()
    except errors as error:
        failure = error
    every = gather(failure)
    failed = [rank for rank, error in enumerate(every) if error is not None]
    if failed:
        raise failure if failed[0] == dist.get_rank() and failure is not None else every[failed[0]]
    return result  # type: ignore[no-any-return]
