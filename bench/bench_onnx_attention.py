"""ONNX Runtime latency: attention graph vs the same classifier exported without attention.

resnet18 (random weights, 1000 classes) at 224x224, batch 8. The baseline is
the plain classifier (normalization inside, logits out) exported with the same
exporter; the members are the gainx attention graph returning the top-1 and
the top-5 maps. Group ``onnx_attention_resnet18``: CPU execution provider;
group ``onnx_attention_resnet18_cuda``: CUDA execution provider
(onnxruntime-gpu, the ``gpu`` extra; skipped when ONNX Runtime has no CUDA
provider; inputs and outputs are host arrays, copied each run for every
member). Targets: <= 1.2x (top-1), <= 1.5x (top-5). ``GAINX_BENCH_QUICK=1``
shrinks to 64x64, batch 2; or set ``GAINX_BENCH_ONNX="size,batch"``, e.g.::

    GAINX_BENCH_ONNX=64,2 python -m pytest bench/bench_onnx_attention.py --benchmark-only -q

Extra info: ``ms_per_image``, ``onnx_mb`` (file size), ``threads`` (ORT intra-op), ``provider``, ``target``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture
from torch import nn

from bench.common import QUICK, seeded_resnet18
from gainx.data.records import IMAGENET_MEAN, IMAGENET_STD
from gainx.runtime import AttentionSession

SIZE, BATCH = (int(v) for v in os.environ.get("GAINX_BENCH_ONNX", "64,2" if QUICK else "224,8").split(","))
ARCH, ROUNDS = "resnet18", 10
TARGETS = {1: "attention top-1 <= 1.2x the plain classifier", 5: "attention top-5 <= 1.5x the plain classifier"}
GROUPS = {"CPUExecutionProvider": "onnx_attention_resnet18", "CUDAExecutionProvider": "onnx_attention_resnet18_cuda"}
PROVIDERS = [
    "CPUExecutionProvider",
    pytest.param(
        "CUDAExecutionProvider",
        marks=pytest.mark.skipif(
            "CUDAExecutionProvider" not in ort.get_available_providers(),
            reason="ONNX Runtime has no CUDA execution provider (install onnxruntime-gpu, the gpu extra)",
        ),
    ),
]


class _Normalized(nn.Module):
    """The plain classifier with the same in-graph normalization as the attention graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, attention_onnx) -> dict[str, Path]:
    model = seeded_resnet18()  # the weights attention_onnx exports
    plain = tmp_path_factory.mktemp("bench_onnx") / "plain.onnx"
    torch.onnx.export(
        _Normalized(model).eval(),
        (torch.rand(BATCH, 3, SIZE, SIZE),),
        str(plain),
        dynamo=True,
        input_names=["images"],
        output_names=["scores"],
        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}},
    )
    return {"plain": plain, **{f"top{k}": attention_onnx(SIZE, k) for k in TARGETS}}


def _images() -> np.ndarray:
    return np.random.default_rng(0).random((BATCH, 3, SIZE, SIZE), dtype=np.float32)


def _info(benchmark: BenchmarkFixture, path: Path, provider: str, target: str) -> None:
    benchmark.extra_info.update(
        {
            "arch": ARCH,
            "image_size": SIZE,
            "batch": BATCH,
            "provider": provider,
            "threads": ort.SessionOptions().intra_op_num_threads or os.cpu_count(),
            "onnx_mb": round(path.stat().st_size / 2**20, 1),
            "target": target,
            "ms_per_image": benchmark.stats.stats.mean * 1e3 / BATCH,
        }
    )


def _providers(provider: str) -> list[str]:
    """The session's providers: CUDA falls back to CPU for the nodes it lacks."""
    return [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]


def _check_in_use(provider: str, in_use: list[str]) -> None:
    """ONNX Runtime silently drops a CUDA provider that fails to load (e.g. no cuDNN): refuse to time the CPU."""
    assert in_use[0] == provider, f"{provider} is not in use: ONNX Runtime runs this session on {in_use}"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_plain_classifier(benchmark: BenchmarkFixture, models: dict[str, Path], provider: str) -> None:
    benchmark.group = GROUPS[provider]
    session = ort.InferenceSession(str(models["plain"]), providers=_providers(provider))
    _check_in_use(provider, session.get_providers())
    feeds = {"images": _images()}
    session.run(None, feeds)  # warm-up
    benchmark.pedantic(session.run, args=(None, feeds), rounds=ROUNDS, iterations=1)
    _info(benchmark, models["plain"], provider, "baseline")
    benchmark.extra_info["baseline"] = True


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("topk", sorted(TARGETS))
def test_attention_graph(benchmark: BenchmarkFixture, models: dict[str, Path], topk: int, provider: str) -> None:
    benchmark.group = GROUPS[provider]
    session = AttentionSession(models[f"top{topk}"], providers=_providers(provider))
    _check_in_use(provider, session.providers)
    images = _images()
    result = session.run(images)  # warm-up
    assert result.attention.shape == (BATCH, topk, SIZE, SIZE)
    benchmark.pedantic(session.run, args=(images,), rounds=ROUNDS, iterations=1)
    _info(benchmark, models[f"top{topk}"], provider, TARGETS[topk])
