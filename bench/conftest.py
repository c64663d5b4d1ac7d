"""Benchmark fixtures (helpers shared by the benchmark modules live in :mod:`bench.common`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bench.common import seeded_resnet18
from gainx.data.records import IMAGENET_MEAN, IMAGENET_STD
from gainx.export import export_onnx
from gainx.models import default_target_layer


@pytest.fixture(scope="session")
def attention_onnx(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int], Path]:
    """``get(size, topk)``: :func:`seeded_resnet18` exported by gainx (attention maps, in-graph ImageNet
    normalization) at ``size`` x ``size``; each (size, topk) is exported once per session."""
    made: dict[tuple[int, int], Path] = {}

    def get(size: int, topk: int) -> Path:
        if (size, topk) not in made:
            out = tmp_path_factory.mktemp("attention_onnx") / f"resnet18-{size}-top{topk}.onnx"
            made[size, topk] = export_onnx(
                seeded_resnet18(),
                out,
                target_layer=default_target_layer("resnet18"),
                topk=topk,
                image_size=(size, size),
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                verify=False,
            )
        return made[size, topk]

    return get
