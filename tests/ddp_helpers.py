"""Two processes of a test, started with the spawn method, each told its rank."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any


def run_ranks(target: Callable[..., None], *args: Any, world_size: int = 2, timeout: float = 240) -> None:
    """``target(rank, *args)`` in ``world_size`` processes; fails when one hangs (killed after ``timeout`` s,
    e.g. ranks that do not join the same collectives) or exits with an error."""
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=target, args=(rank, *args)) for rank in range(world_size)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=timeout)
    hung = [proc for proc in procs if proc.is_alive()]
    for proc in hung:
        proc.kill()
    assert not hung, f"{len(hung)} rank(s) did not finish: do the ranks join the same collectives?"
    assert all(proc.exitcode == 0 for proc in procs), [proc.exitcode for proc in procs]
