"""Keep batch-norm running statistics unchanged during a forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def frozen_bn_stats(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Batch norm still normalizes with batch statistics, but its running
    mean/var (and batch counter) are not updated: the erased images of the
    attention-mining stream do not shift the statistics used at test time.

    Each batch-norm layer in train mode that tracks running statistics is switched
    to ``track_running_stats=False`` for the duration: in train mode that is exactly
    "normalize with the batch statistics, pass no running buffers" (the layer's own
    contract), so entering and leaving cost no device work at all, whatever the number
    of layers, and the layers skip their running-average and counter updates.
    """
    if not enabled:
        yield
        return
    switched = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    for m in switched:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in switched:
            m.track_running_stats = True
