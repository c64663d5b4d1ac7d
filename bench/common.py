"""Shared benchmark helpers: device choice, quick mode, CUDA peak memory, the benchmarks' resnet18."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from gainx.models import build_model

QUICK = os.environ.get("GAINX_BENCH_QUICK", "0") == "1"


def seeded_resnet18() -> nn.Module:
    """The benchmarks' resnet18: 1000 classes, random weights from seed 0, eval mode."""
    torch.manual_seed(0)
    return build_model("resnet18", 1000).eval()


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak extra memory (MiB) allocated during one call of ``fn``.

    Measured with the CUDA caching allocator's peak counter; torch exposes no
    such counter for CPU tensors, so on CPU this returns NaN (reported as
    "n/a"), never a made-up number.
    """
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - start) / 2**20
