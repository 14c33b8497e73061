"""Run a function on N local processes as torchrun would start them (gloo on CPU).

``run_ranks(target, world_size, *args)`` starts ``world_size`` fresh processes (``spawn``, so no
state leaks from the test process), sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and a free ``MASTER_PORT`` in each, calls ``target(*args)`` there, and returns
each rank's return value (picklable), in rank order. A rank that raises makes ``run_ranks`` raise
:class:`RankFailed` with that rank's traceback text, a rank that dies without a result (a kill)
with its exit code (``rank 1: died without a result (exit code -9)``); a rank still running
after ``timeout_s`` is killed (so a hung collective fails the test instead of hanging it).

``target`` must be importable by name (a module-level function), as for any spawned process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import time
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
        _collect(results, procs, found, timeout_s)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    failed = [f"rank {rank}: {value}" for rank, (ok, value) in sorted(found.items()) if not ok]
    if failed:
        raise RankFailed("\n".join(failed))
    return [found[rank][1] for rank in range(world_size)]


def _collect(results: Any, procs: list[Any], found: dict[int, tuple[bool, Any]], timeout_s: float) -> None:
    """Fill ``found`` with each rank's (ok, value); a rank that died without one counts as failed."""
    deadline = time.monotonic() + timeout_s
    while len(found) < len(procs):
        try:
            rank, ok, value = results.get(timeout=0.2)
            found[rank] = (ok, value)
            continue
        except queue.Empty:
            pass
        dead = [rank for rank, proc in enumerate(procs) if rank not in found and proc.exitcode is not None]
        if dead:
            time.sleep(0.5)  # a result put just before exiting may still be on its way
            while True:
                try:
                    rank, ok, value = results.get(timeout=0.1)
                except queue.Empty:
                    break
                found[rank] = (ok, value)
            for rank in dead:
                found.setdefault(rank, (False, f"died without a result (exit code {procs[rank].exitcode})"))
        if time.monotonic() > deadline:
            missing = sorted(set(range(len(procs))) - set(found))
            raise RankFailed(f"ranks {missing} gave no result in {timeout_s} s")
