"""Shared benchmark helpers: device choice, quick mode, CUDA peak memory, the exported resnet18."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from gainx.data.records import IMAGENET_MEAN, IMAGENET_STD
from gainx.export import export_onnx
from gainx.models import build_model, default_target_layer

QUICK = os.environ.get("GAINX_BENCH_QUICK", "0") == "1"


def seeded_resnet18() -> nn.Module:
    """The benchmarks' resnet18: 1000 classes, random weights from seed 0, eval mode."""
    torch.manual_seed(0)
    return build_model("resnet18", 1000).eval()


@pytest.fixture(scope="session")
def attention_onnx(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int], Path]:
    """``get(size, topk)``: :func:`seeded_resnet18` exported by gainx (attention maps, in-graph ImageNet
    normalization) at ``size`` x ``size``; each (size, topk) is exported once per session."""
    made: dict[tuple[int, int], Path] = {}

    def get(size: int, topk: int) -> Path:
        if (size, topk) not in made:
            out = tmp_path_factory.mktemp("attention_onnx") / f"resnet18-{size}-top{topk}.onnx"
            made[size, topk] = export_onnx(seeded_resnet18(), out, target_layer=default_target_layer("resnet18"),
                                           topk=topk, image_size=(size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                           verify=False)
        return made[size, topk]

    return get


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
