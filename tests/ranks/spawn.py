"""Run a function on N local processes as torchrun would start them (gloo on CPU).

``run_ranks(target, world_size, *args)`` starts ``world_size`` fresh processes (``spawn``, so no
state leaks from the test process), sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and a free ``MASTER_PORT`` in each, calls ``target(*args)`` there, and returns
each rank's return value (picklable), in rank order. A rank that raises makes ``run_ranks`` raise
:class:`RankFailed` with that rank's traceback text; a rank still running after ``timeout_s`` is
killed (so a hung collective fails the test instead of hanging it).

``target`` must be importable by name (a module-level function), as for any spawned process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any


class RankFailed(RuntimeError):
    """A rank raised (the message holds its rank and traceback) or timed out."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _entry(target: Callable[..., Any], rank: int, world: int, port: int, env: dict[str, str],
           results: Any, args: tuple[Any, ...]) -> None:
    os.environ.update(env)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        results.put((rank, True, target(*args)))
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which re-raises
        results.put((rank, False, f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))


def run_ranks(target: Callable[..., Any], world_size: int, *args: Any, timeout_s: float = 300.0,
              env: dict[str, str] | None = None) -> list[Any]:
    """``[target(*args) on rank 0, ..., on rank world_size - 1]``, each in its own process."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(target, rank, world_size, port, dict(env or {}), results, args))
             for rank in range(world_size)]
    for proc in procs:
        proc.start()
    found: dict[int, tuple[bool, Any]] = {}
    try:
        while len(found) < world_size:
            rank, ok, value = results.get(timeout=timeout_s)
            found[rank] = (ok, value)
    except queue.Empty:
        raise RankFailed(f"ranks {sorted(set(range(world_size)) - set(found))} gave no result in {timeout_s} s") from None
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    failed = [f"rank {rank}: {value}" for rank, (ok, value) in sorted(found.items()) if not ok]
    if failed:
        raise RankFailed("\n".join(failed))
    return [found[rank][1] for rank in range(world_size)]
