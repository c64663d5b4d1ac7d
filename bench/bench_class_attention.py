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

On CUDA two more cases run (eager, extension and compile; not quick mode):
group ``class_attention-B4-k{K}`` (a small batch, B = 4) and
``class_attention-14to448-k{K}`` (a large map, 14 x 14 -> 448 x 448); their
members carry the case in their id (``test_extension[B4-5]``).

Every member is checked to produce the same maps before it is timed. Wall
times (pytest-benchmark's stats) are what a user sees, host overhead included.
Extra info: ``device_time_ms`` (summed kernel time of one call from the
profiler, :func:`bench.common.device_time_ms`; NaN on CPU), ``bytes_moved_mb``
(features and gathered weight rows read once, maps written once: the op is
write-bound), ``bandwidth_gbs`` (bytes moved / best wall time),
``device_bandwidth_frac_of_peak`` (bytes moved / device time / peak, peak from
:func:`bench.common.peak_bandwidth`) and ``peak_mem_mb``.

Runs on CUDA when available (``bench_device``). ``GAINX_BENCH_QUICK=1``
shrinks to B 4, C 64 (7 x 7 -> 224 x 224). Environment overrides of the main
case: GAINX_BENCH_BATCH, GAINX_BENCH_CHANNELS, GAINX_BENCH_FEAT,
GAINX_BENCH_OUT, GAINX_BENCH_CLASSES ("5,20"), GAINX_BENCH_DEVICE (e.g. cpu on
a GPU machine), GAINX_BENCH_GRADCAM_ROUNDS (1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from bench.common import QUICK, bench_device, device_time_ms, peak_memory_mb, record_device_bandwidth, sync
from gainx.ops import extension
from gainx.ops.class_attention import class_attention_eager

B = int(os.environ.get("GAINX_BENCH_BATCH", 4 if QUICK else 32))
RESNET18_CHANNELS = 512  # resnet18's layer4, the model the pytorch-grad-cam row runs
C = int(os.environ.get("GAINX_BENCH_CHANNELS", 64 if QUICK else RESNET18_CHANNELS))
FEAT = int(os.environ.get("GAINX_BENCH_FEAT", 7))
OUT = int(os.environ.get("GAINX_BENCH_OUT", 224))  # grad_cam maps come at the image size, FEAT x 32
KS = [int(k) for k in os.environ.get("GAINX_BENCH_CLASSES", "5,20").split(",")]
DEVICE = torch.device(os.environ["GAINX_BENCH_DEVICE"]) if "GAINX_BENCH_DEVICE" in os.environ else bench_device()
GRADCAM_ROUNDS = int(os.environ.get("GAINX_BENCH_GRADCAM_ROUNDS", 1))
NUM_CLASSES = 20
TARGET = "CPU: >= 3x eager and >= 20x pytorch-grad-cam; GPU: >= 5x eager, >= 2x torch.compile, >= 100x pytorch-grad-cam"


@dataclass(frozen=True)
class Case:
    """One benchmark shape; ``name`` is empty for the main case (its groups and ids carry only K)."""

    name: str
    batch: int
    feat: int
    out: int

    def group(self, k: int) -> str:
        return f"class_attention-{self.name}-k{k}" if self.name else f"class_attention-k{k}"


MAIN = Case("", B, FEAT, OUT)
CASES = [MAIN]
if DEVICE.type == "cuda" and not QUICK:
    CASES += [Case("B4", 4, FEAT, OUT), Case("14to448", B, 14, 448)]
PARAMS = [pytest.param(case, k, id=f"{case.name}-{k}" if case.name else str(k)) for case in CASES for k in KS]
MAIN_PARAMS = [pytest.param(MAIN, k, id=str(k)) for k in KS]


def _inputs(case: Case, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(case.batch, C, case.feat, case.feat, generator=g).relu().to(DEVICE)
    weight = torch.randn(NUM_CLASSES, C, generator=g).to(DEVICE)
    classes = torch.stack([torch.randperm(NUM_CLASSES, generator=g)[:k] for _ in range(case.batch)]).to(DEVICE)
    return features, weight, classes


def _bytes_moved(case: Case, k: int) -> int:
    """Features and the K gathered weight rows read once, the maps written once (fp32)."""
    return 4 * (case.batch * C * case.feat**2 + case.batch * k * C + case.batch * k * case.out**2)


def _start(benchmark, case: Case, k: int, baseline: bool = False) -> None:
    benchmark.group = case.group(k)
    benchmark.extra_info.update(
        {
            "target": TARGET,
            "maps": case.batch * k,
            "shape": f"B={case.batch} C={C} {case.feat}x{case.feat}->{case.out}x{case.out} K={k}",
            "device": str(DEVICE),
            "bytes_moved_mb": _bytes_moved(case, k) / 2**20,
        }
    )
    if baseline:
        benchmark.extra_info["baseline"] = True


def _bandwidth(benchmark, case: Case, k: int, device_ms: float = float("nan")) -> None:
    """Bytes moved per second at the best wall time, and as a fraction of the device's peak at the device time."""
    moved = _bytes_moved(case, k)
    benchmark.extra_info["bandwidth_gbs"] = moved / benchmark.stats.stats.min / 1e9
    record_device_bandwidth(benchmark.extra_info, moved, device_ms, DEVICE)


def _run(benchmark, fn: Callable[[], torch.Tensor], case: Case, k: int) -> torch.Tensor:
    def call() -> torch.Tensor:
        out = fn()
        sync(DEVICE)
        return out

    out = benchmark.pedantic(call, rounds=10, warmup_rounds=2, iterations=1)
    _bandwidth(benchmark, case, k, device_time_ms(fn, DEVICE))
    benchmark.extra_info["peak_mem_mb"] = peak_memory_mb(fn, DEVICE)
    return out


def _reference(case: Case, k: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    inputs = _inputs(case, k)
    return inputs, class_attention_eager(*inputs, (case.out, case.out))


@pytest.mark.parametrize("case,k", PARAMS)
def test_eager(benchmark, case, k):
    _start(benchmark, case, k, baseline=True)
    features, weight, classes = _inputs(case, k)
    out = _run(benchmark, lambda: class_attention_eager(features, weight, classes, (case.out, case.out)), case, k)
    assert out.shape == (case.batch, k, case.out, case.out)


@pytest.mark.parametrize("case,k", PARAMS)
def test_extension(benchmark, case, k):
    if not extension.supports(DEVICE):
        pytest.skip(f"gainx._C has no kernels for {DEVICE}")
    _start(benchmark, case, k)
    (features, weight, classes), want = _reference(case, k)
    size = [case.out, case.out]
    out = _run(benchmark, lambda: torch.ops.gainx.class_attention(features, weight, classes, size), case, k)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case,k", PARAMS)
def test_compile(benchmark, case, k):
    _start(benchmark, case, k)
    (features, weight, classes), want = _reference(case, k)
    compiled = torch.compile(class_attention_eager, dynamic=False)
    size = (case.out, case.out)
    out = _run(benchmark, lambda: compiled(features, weight, classes, size), case, k)  # warm-up rounds compile
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case,k", MAIN_PARAMS)
def test_grad_cam(benchmark, case, k):
    if C != RESNET18_CHANNELS:  # the row's shape, bytes and group are those of the other rows
        pytest.skip(f"pytorch-grad-cam runs resnet18 (layer4: {RESNET18_CHANNELS} channels); compared at C = 512 only")
    gradcam_lib = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam is in the bench extra")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchvision.models import resnet18

    _start(benchmark, case, k)
    benchmark.extra_info["note"] = "model forward + one backward per class batch, maps copied to the CPU"
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=NUM_CLASSES).eval().to(DEVICE)
    stride = 32  # resnet18 layer4: 1/32 of the image
    images = torch.randn(case.batch, 3, case.feat * stride, case.feat * stride, device=DEVICE)
    _, _, classes = _inputs(case, k)
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
    want = class_attention_eager(store["F"], model.fc.weight.detach(), classes, (case.out, case.out)).cpu()
    got = benchmark.pedantic(maps, rounds=GRADCAM_ROUNDS, warmup_rounds=0, iterations=1)
    _bandwidth(benchmark, case, k)  # device time: not measured (host-side OpenCV resize inside)
    # OpenCV's bilinear resize rounds differently from torch's: maps agree to ~1e-3.
    torch.testing.assert_close(got, want, atol=1e-2, rtol=0)
