"""Learning-rate schedules as closed forms of the epoch, so a resumed run may change its length.

Cosine annealing (SGDR without restarts, eta_min = 0): ``lr_e = lr_0 * (1 + cos(pi * e / E)) / 2`` for epoch
``e`` of ``E``. Being a function of ``(e, E)`` alone, resuming with a larger ``E`` continues on the cosine of
the new length from the current epoch (the rate steps up from the old curve to the new one); resuming with the
same ``E`` reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

SCHEDULERS = ("cosine", "none")


def epoch_factor(name: str, epochs: int) -> Callable[[int], float]:
    """The multiplier of the base learning rate at each epoch for schedule ``name`` over ``epochs`` epochs."""
    if name == "cosine":
        total = max(epochs, 1)
        return lambda epoch: 0.5 * (1.0 + math.cos(math.pi * min(epoch, total) / total))
    if name == "none":
        return lambda epoch: 1.0
    raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")


def build_scheduler(name: str, epochs: int, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch scheduler for ``optimizer`` (``scheduler.step()`` once after every epoch)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, epoch_factor(name, epochs))


def sync_learning_rate(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set every parameter group's rate to the schedule's value at the scheduler's epoch.

    Needed after loading a checkpoint: the optimizer state carries the rate of the schedule it was saved
    with, which differs from the current one when the number of epochs changed.
    """
    for group, base, factor in zip(
        scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * factor(scheduler.last_epoch)
