"""Batched Grad-CAM maps for a GAP + linear head.

Group ``class_attention-k{K}``: B images, C channels, h x w features -> K maps
of H x W per image (default: 32, 512, 7 x 7 -> 224 x 224, K = 5 and 20):

* ``eager``      :func:`gainx.ops.class_attention.class_attention_eager` (baseline,
                 loop-free PyTorch, same math);
* ``extension``  ``torch.ops.gainx.class_attention`` (gainx._C);
* ``compile``    ``torch.compile(class_attention_eager)``;
* ``grad_cam``   ``pytorch_grad_cam.GradCAM`` on a resnet18 whose layer4 gives
                 those features: it needs the model and the images and runs one
                 forward + backward per class batch (K of them), so its time is
                 the whole map production for the same classes.

Every member is checked to produce the same maps before it is timed. Runs on
CUDA when available (``bench_device``). ``GAINX_BENCH_QUICK=1`` shrinks to
B 4, C 64 (7 x 7 -> 224 x 224). Environment overrides: GAINX_BENCH_BATCH,
GAINX_BENCH_CHANNELS, GAINX_BENCH_FEAT, GAINX_BENCH_OUT, GAINX_BENCH_CLASSES
("5,20"), GAINX_BENCH_DEVICE (e.g. cpu on a GPU machine), GAINX_BENCH_GRADCAM_ROUNDS (1).
"""

from __future__ import annotations

import os

import pytest
import torch

from bench.common import QUICK, bench_device, peak_memory_mb, sync
from gainx.ops import extension
from gainx.ops.class_attention import class_attention_eager

B = int(os.environ.get("GAINX_BENCH_BATCH", 4 if QUICK else 32))
C = int(os.environ.get("GAINX_BENCH_CHANNELS", 64 if QUICK else 512))
FEAT = int(os.environ.get("GAINX_BENCH_FEAT", 7))
OUT = int(os.environ.get("GAINX_BENCH_OUT", 224))  # grad_cam maps come at the image size, FEAT x 32
KS = [int(k) for k in os.environ.get("GAINX_BENCH_CLASSES", "5,20").split(",")]
DEVICE = torch.device(os.environ["GAINX_BENCH_DEVICE"]) if "GAINX_BENCH_DEVICE" in os.environ else bench_device()
GRADCAM_ROUNDS = int(os.environ.get("GAINX_BENCH_GRADCAM_ROUNDS", 1))
NUM_CLASSES = 20
TARGET = "CPU: >= 3x eager and >= 20x pytorch-grad-cam; GPU: >= 5x eager and >= 100x pytorch-grad-cam"


def _inputs(k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(B, C, FEAT, FEAT, generator=g).relu().to(DEVICE)
    weight = torch.randn(NUM_CLASSES, C, generator=g).to(DEVICE)
    classes = torch.stack([torch.randperm(NUM_CLASSES, generator=g)[:k] for _ in range(B)]).to(DEVICE)
    return features, weight, classes


def _record(benchmark, k: int, baseline: bool = False) -> None:
    benchmark.extra_info.update(
        {
            "target": TARGET,
            "maps": B * k,
            "shape": f"B={B} C={C} {FEAT}x{FEAT}->{OUT}x{OUT} K={k}",
            "device": str(DEVICE),
        }
    )
    if baseline:
        benchmark.extra_info["baseline"] = True


def _bandwidth(benchmark, k: int) -> None:
    """Output bytes written per second at the best round (the op is write-bound)."""
    out_bytes = B * k * OUT * OUT * 4
    best = benchmark.stats.stats.min
    benchmark.extra_info["bandwidth_gbs"] = out_bytes / best / 1e9


def _run(benchmark, fn, k: int) -> torch.Tensor:
    def call() -> torch.Tensor:
        out = fn()
        sync(DEVICE)
        return out

    out = benchmark.pedantic(call, rounds=10, warmup_rounds=2, iterations=1)
    _bandwidth(benchmark, k)
    benchmark.extra_info["peak_mem_mb"] = peak_memory_mb(fn, DEVICE)
    return out


@pytest.mark.parametrize("k", KS)
def test_eager(benchmark, k):
    benchmark.group = f"class_attention-k{k}"
    _record(benchmark, k, baseline=True)
    features, weight, classes = _inputs(k)
    out = _run(benchmark, lambda: class_attention_eager(features, weight, classes, (OUT, OUT)), k)
    assert out.shape == (B, k, OUT, OUT)


@pytest.mark.parametrize("k", KS)
def test_extension(benchmark, k):
    benchmark.group = f"class_attention-k{k}"
    if not extension.supports(DEVICE):
        pytest.skip(f"gainx._C has no kernels for {DEVICE}")
    _record(benchmark, k)
    features, weight, classes = _inputs(k)
    out = _run(benchmark, lambda: torch.ops.gainx.class_attention(features, weight, classes, [OUT, OUT]), k)
    torch.testing.assert_close(out, class_attention_eager(features, weight, classes, (OUT, OUT)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", KS)
def test_compile(benchmark, k):
    benchmark.group = f"class_attention-k{k}"
    _record(benchmark, k)
    features, weight, classes = _inputs(k)
    compiled = torch.compile(class_attention_eager, dynamic=False)
    out = _run(benchmark, lambda: compiled(features, weight, classes, (OUT, OUT)), k)  # warm-up rounds compile
    torch.testing.assert_close(out, class_attention_eager(features, weight, classes, (OUT, OUT)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", KS)
def test_grad_cam(benchmark, k):
    benchmark.group = f"class_attention-k{k}"
    gradcam_lib = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam is in the bench extra")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchvision.models import resnet18

    _record(benchmark, k)
    benchmark.extra_info["note"] = "model forward + one backward per class batch, maps copied to the CPU"
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=NUM_CLASSES).eval().to(DEVICE)
    stride = 32  # resnet18 layer4: 1/32 of the image
    images = torch.randn(B, 3, FEAT * stride, FEAT * stride, device=DEVICE)
    _, _, classes = _inputs(k)
    cam = gradcam_lib.GradCAM(model=model, target_layers=[model.layer4[-1]])
    cam.compute_input_gradient = False

    def maps() -> torch.Tensor:
        per_class = [
            torch.from_numpy(cam(images, targets=[ClassifierOutputTarget(int(c)) for c in classes[:, j]]))
            for j in range(k)
        ]
        return torch.stack(per_class, 1)

    store = {}
    hook = model.layer4.register_forward_hook(lambda m, i, o: store.update(F=o.detach()))
    with torch.no_grad():
        model(images)
    hook.remove()
    want = class_attention_eager(store["F"], model.fc.weight.detach(), classes, (OUT, OUT)).cpu()
    got = benchmark.pedantic(maps, rounds=GRADCAM_ROUNDS, warmup_rounds=0, iterations=1)
    _bandwidth(benchmark, k)
    # OpenCV's bilinear resize rounds differently from torch's: maps agree to ~1e-3.
    torch.testing.assert_close(got, want, atol=1e-2, rtol=0)
