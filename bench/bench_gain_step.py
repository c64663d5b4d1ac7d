"""A GAIN training step against a plain classification step (target: <= 2.5x).

resnet18, batch 16, 224x224, one ground-truth class per image, SGD. The plain
step is forward + cross-entropy + backward + update; the GAIN step adds the
Grad-CAM gradient pass, the erase step and the attention-mining forward
(eq. 1-6). ``GAINX_BENCH_QUICK=1`` shrinks to batch 4 at 112x112.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from bench.common import QUICK, bench_device, peak_memory_mb, sync
from gainx.losses import GAIN

BATCH, SIZE, CLASSES = (4, 112, 20) if QUICK else (16, 224, 20)


def _setup(method: str | None, second_order: bool = False):
    torch.manual_seed(0)
    device = bench_device()
    model = torchvision.models.resnet18(num_classes=CLASSES).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(BATCH, 3, SIZE, SIZE, device=device)
    target = torch.randint(0, CLASSES, (BATCH,), device=device)
    labels = F.one_hot(target, CLASSES).float()
    objective = GAIN(model, "layer4", method=method, second_order=second_order) if method else None

    def step() -> None:
        loss = objective(images, labels).loss if objective else F.cross_entropy(model(images), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)

    step()  # warm-up (allocator, cudnn autotune)
    return step, device


def _run(benchmark, step, device, **info) -> None:
    benchmark.extra_info.update(
        batch=BATCH, image_size=SIZE, device=str(device), peak_mem_mb=peak_memory_mb(step, device), **info
    )
    benchmark.pedantic(step, rounds=3 if device.type == "cpu" else 20, warmup_rounds=1)


@pytest.mark.benchmark(group="gain_step_resnet18")
def test_plain_classification_step(benchmark):
    step, device = _setup(None)
    _run(benchmark, step, device, baseline=True)


@pytest.mark.benchmark(group="gain_step_resnet18")
def test_gain_step(benchmark):
    step, device = _setup("gain")
    _run(benchmark, step, device, target="<= 2.5x the plain step")


@pytest.mark.benchmark(group="gain_step_resnet18")
def test_gain_step_second_order(benchmark):
    step, device = _setup("gain", second_order=True)
    _run(benchmark, step, device)
