"""A GAIN training step against a plain classification step.

Group ``gain_step_resnet18`` (target <= 2.5x): resnet18, batch 16, 224x224,
fp32, on the benchmark device. Group ``gain_step_resnet50_amp`` (target
<= 2.3x): resnet50, batch 32, 224x224, mixed precision as the trainer runs it
(``torch.autocast`` fp16 + ``GradScaler``), CUDA only. One ground-truth class
per image, SGD. The plain step is forward + cross-entropy + backward + update;
the GAIN step adds the Grad-CAM gradient pass, the erase step and the
attention-mining forward (eq. 1-6). The labels stay on the CPU, as a data
loader yields them: the GAIN step plans its pairs there and makes no host
sync. ``GAINX_BENCH_QUICK=1`` shrinks the resnet18 group to batch 4 at
112x112 (the resnet50 group keeps its shape).

Each member reports the wall time a user sees (pytest-benchmark's stats) and,
on CUDA, ``device_time_ms``: the summed kernel time of one step from the
profiler, so host overhead shows as wall time above device time. The
``*_cuda_graph`` members (CUDA only) run the GAIN step with
``GAIN(..., cuda_graph=True)``: forward and backward replayed from a CUDA
graph (under autocast with ``cache_enabled=False``, which graphs require).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision

from bench.common import QUICK, bench_device, device_time_ms, peak_memory_mb, sync
from bench.targets import AMP_BATCH, AMP_SIZE
from gainx.losses import GAIN

BATCH, SIZE, CLASSES = (4, 112, 20) if QUICK else (16, 224, 20)
DEVICE = bench_device()
needs_cuda = pytest.mark.skipif(
    DEVICE.type != "cuda", reason="timed on CUDA only (autocast fp16 + GradScaler, CUDA graphs)"
)


def _setup(
    method: str | None,
    arch: str = "resnet18",
    batch: int = BATCH,
    size: int = SIZE,
    second_order: bool = False,
    amp: bool = False,
    cuda_graph: bool = False,
) -> Callable[[], None]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=CLASSES).to(DEVICE).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(DEVICE.type, enabled=amp)
    images = torch.randn(batch, 3, size, size, device=DEVICE)
    target = torch.randint(0, CLASSES, (batch,), device=DEVICE)
    labels = F.one_hot(target.cpu(), CLASSES).float()
    objective = (
        # the paper's step (eq. 6 at alpha = 1), whatever the library's default recipe
        GAIN(
            model,
            "layer4",
            method=method,
            alpha=1.0,
            guidance="paper",
            second_order=second_order,
            cuda_graph=cuda_graph,
        )
        if method
        else None
    )

    def step() -> None:
        with torch.autocast(DEVICE.type, enabled=amp, cache_enabled=False if cuda_graph else None):
            loss = objective(images, labels).loss if objective else F.cross_entropy(model(images), target)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sync(DEVICE)

    step()  # warm-up (allocator, cudnn autotune, graph capture)
    return step


def _run(benchmark, step: Callable[[], None], batch: int = BATCH, size: int = SIZE, **info) -> None:
    benchmark.extra_info.update(
        batch=batch,
        image_size=size,
        device=str(DEVICE),
        peak_mem_mb=peak_memory_mb(step, DEVICE),
        device_time_ms=device_time_ms(step, DEVICE),
        **info,
    )
    benchmark.pedantic(step, rounds=3 if DEVICE.type == "cpu" else 20, warmup_rounds=1)


@pytest.mark.benchmark(group="gain_step_resnet18")
def test_plain_classification_step(benchmark):
    _run(benchmark, _setup(None), baseline=True)


@pytest.mark.benchmark(group="gain_step_resnet18")
def test_gain_step(benchmark):
    _run(benchmark, _setup("gain"), target="<= 2.5x the plain step")


@pytest.mark.benchmark(group="gain_step_resnet18")
def test_gain_step_second_order(benchmark):
    _run(benchmark, _setup("gain", second_order=True))


@needs_cuda
@pytest.mark.benchmark(group="gain_step_resnet18")
def test_gain_step_cuda_graph(benchmark):
    _run(benchmark, _setup("gain", cuda_graph=True), cuda_graph=True)


@needs_cuda
@pytest.mark.benchmark(group="gain_step_resnet50_amp")
def test_plain_classification_step_amp(benchmark):
    step = _setup(None, "resnet50", AMP_BATCH, AMP_SIZE, amp=True)
    _run(benchmark, step, AMP_BATCH, AMP_SIZE, amp="fp16", baseline=True)


@needs_cuda
@pytest.mark.benchmark(group="gain_step_resnet50_amp")
def test_gain_step_amp(benchmark):
    step = _setup("gain", "resnet50", AMP_BATCH, AMP_SIZE, amp=True)
    _run(benchmark, step, AMP_BATCH, AMP_SIZE, amp="fp16", target="<= 2.3x the plain step")


@needs_cuda
@pytest.mark.benchmark(group="gain_step_resnet50_amp")
def test_gain_step_amp_cuda_graph(benchmark):
    step = _setup("gain", "resnet50", AMP_BATCH, AMP_SIZE, amp=True, cuda_graph=True)
    _run(benchmark, step, AMP_BATCH, AMP_SIZE, amp="fp16", cuda_graph=True)
