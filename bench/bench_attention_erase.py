"""Attention-mining step (eq. 1-4): eager vs torch.compile(eager) vs the two Triton backends.

Members: ``eager`` (the baseline), ``compile`` (``torch.compile`` of eager),
``triton`` (:mod:`gainx.ops.attention_erase_triton`) and ``fused``
(:mod:`gainx.ops.attention_erase_fused`: 2 launches forward, 3 backward, no host
work).

Groups ``attention_erase_{forward,backward,full}``; the eager reference is the
baseline of each. Shapes default to ResNet-50: B = 32 images x 2
classes = 64 pairs, C = 2048, 7x7 -> 224x224, fp32; ``GAINX_BENCH_QUICK=1``
shrinks to 2 x 2 pairs, C = 64, 7x7 -> 64x64. Override with
``GAINX_BENCH_ATTN="B,classes,C,h,w,H,W"`` and ``GAINX_BENCH_DTYPE`` (float32,
float16, bfloat16), e.g. for a quick CPU run::

    GAINX_BENCH_QUICK=1 python -m pytest bench/bench_attention_erase.py --benchmark-only -q

Triton runs only on CUDA (skipped on CPU: the interpreter is a correctness
tool, not a speed one). Wall times (pytest-benchmark's stats) are what a user
sees, host overhead included. Extra info: ``device_time_ms`` (summed kernel
time of one call from the profiler, :func:`bench.common.device_time_ms`; NaN
on CPU), ``device_bandwidth_frac_of_peak`` (bytes moved / device time / peak),
``peak_mem_mb`` (CUDA peak allocated
during one step above what was allocated before it; n/a on CPU), ``bytes_moved_mb`` (bytes that
must move: every input read once, every output written once),
``bandwidth_gbs`` (bytes moved / median time) and ``bandwidth_frac_of_peak``
(peak from :func:`bench.common.peak_bandwidth`, with ``peak_bandwidth_gbs`` and
``peak_bandwidth_source``), ``target``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache, partial

import pytest
import torch
from pytest_benchmark.fixture import BenchmarkFixture

from bench.common import QUICK, bench_device, device_time_ms, peak_memory_mb, record_device_bandwidth, sync
from gainx.ops import attention_erase_eager

DEVICE = bench_device()
CUDA = DEVICE.type == "cuda"
_DEFAULT_SHAPE = "2,2,64,7,7,64,64" if QUICK else "32,2,2048,7,7,224,224"
SHAPE = tuple(int(v) for v in os.environ.get("GAINX_BENCH_ATTN", _DEFAULT_SHAPE).split(","))
ROUNDS = 5 if not CUDA else 50
DTYPE = getattr(torch, os.environ.get("GAINX_BENCH_DTYPE", "float32"))
TARGET = (
    "triton and fused, fp32: full step >= 10x eager and >= 4x torch.compile, forward >= 2x torch.compile, "
    "device-time bandwidth >= 50% of peak, peak memory <= 0.5x eager; bf16 and fp16 no slower than fp32"
)
if len(SHAPE) != 7:
    raise ValueError(f"GAINX_BENCH_ATTN must be 7 integers B,classes,C,h,w,H,W; got {SHAPE}")


def _impl(name: str) -> Callable:
    if name == "eager":
        return attention_erase_eager
    if name == "compile":
        return _compiled()
    if name == "fused":
        from gainx.ops.attention_erase_fused import attention_erase_fused

        return attention_erase_fused
    from gainx.ops.attention_erase_triton import attention_erase_triton

    return attention_erase_triton


@cache
def _compiled() -> Callable:
    return torch.compile(attention_erase_eager)


def _inputs() -> tuple[torch.Tensor, ...]:
    B, classes, C, h, w, H, W = SHAPE
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    P = B * classes
    features = torch.randn(P, C, h, w, generator=gen, device=DEVICE).to(DTYPE).requires_grad_(True)
    grads = torch.randn(P, C, h, w, generator=gen, device=DEVICE).to(DTYPE).requires_grad_(True)
    images = torch.rand(B, 3, H, W, generator=gen, device=DEVICE).to(DTYPE).requires_grad_(True)
    index = torch.arange(B, device=DEVICE).repeat_interleave(classes)
    return features, grads, images, index


def _bytes_moved(phase: str) -> int:
    """Minimum traffic: forward reads F, G, I and writes cam, I*; backward reads F, dI*, dcam, I
    and writes dF, dG, dI."""
    B, classes, C, h, w, H, W = SHAPE
    P, size = B * classes, torch.tensor([], dtype=DTYPE).element_size()
    feat, low, img, pairs_img = P * C * h * w, P * h * w, B * 3 * H * W, P * 3 * H * W
    fwd = (2 * feat + img + low + pairs_img) * size
    bwd = (3 * feat + pairs_img + low + 2 * img) * size
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}[phase]


def _forward(fn: Callable, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(fn(*inputs))


def _backward(outputs: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...], weights: tuple) -> None:
    torch.autograd.grad(outputs, inputs[:3], weights)


def _record(benchmark: BenchmarkFixture, phase: str, name: str, fresh_step: Callable[[], Callable[[], object]]) -> None:
    """Store the benchmark's extra info; ``fresh_step()`` gives the step that each measurement (peak memory,
    device time) calls once, built outside the measurement (the backward's graph: each call needs its own)."""
    info = benchmark.extra_info
    info.update(
        variant=name,
        phase=phase,
        shape="B,classes,C,h,w,H,W=" + ",".join(map(str, SHAPE)),
        dtype=str(DTYPE),
        device=torch.cuda.get_device_name() if CUDA else "cpu",
        target=TARGET,
        bytes_moved_mb=_bytes_moved(phase) / 2**20,
    )
    if name == "eager":
        info["baseline"] = True
    info["peak_mem_mb"] = peak_memory_mb(fresh_step(), DEVICE)
    peak = record_device_bandwidth(info, _bytes_moved(phase), device_time_ms(fresh_step(), DEVICE), DEVICE)
    median = benchmark.stats.stats.median if benchmark.stats else None
    if median:
        info["bandwidth_gbs"] = _bytes_moved(phase) / median / 1e9
        if peak:
            info["bandwidth_frac_of_peak"] = _bytes_moved(phase) / median / peak[0]


_CUDA_ONLY = pytest.mark.skipif(
    not CUDA, reason="Triton kernels are timed on CUDA only; the CPU interpreter is for correctness"
)
VARIANTS = ["eager", "compile", *(pytest.param(name, marks=_CUDA_ONLY) for name in ("triton", "fused"))]


def _setup(name: str) -> tuple[Callable, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    fn, inputs = _impl(name), _inputs()
    out = _forward(fn, inputs)  # warm-up (compiles / autotunes) forward
    weights = tuple(torch.randn_like(o) for o in out)
    _backward(out, inputs, weights)  # and backward
    sync(DEVICE)
    return fn, inputs, weights


@pytest.mark.benchmark(group="attention_erase_forward")
@pytest.mark.parametrize("name", VARIANTS)
def test_forward(benchmark: BenchmarkFixture, name: str) -> None:
    fn, inputs, _ = _setup(name)

    def step() -> object:
        out = _forward(fn, inputs)
        sync(DEVICE)
        return out

    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1)
    _record(benchmark, "forward", name, lambda: step)


@pytest.mark.benchmark(group="attention_erase_backward")
@pytest.mark.parametrize("name", VARIANTS)
def test_backward(benchmark: BenchmarkFixture, name: str) -> None:
    fn, inputs, weights = _setup(name)

    def graph() -> tuple[tuple, dict]:
        out = _forward(fn, inputs)
        sync(DEVICE)
        return (out,), {}

    def step(out: tuple[torch.Tensor, ...]) -> None:
        _backward(out, inputs, weights)
        sync(DEVICE)

    benchmark.pedantic(step, setup=graph, rounds=ROUNDS)
    _record(benchmark, "backward", name, lambda: partial(step, graph()[0][0]))


@pytest.mark.benchmark(group="attention_erase_full")
@pytest.mark.parametrize("name", VARIANTS)
def test_full(benchmark: BenchmarkFixture, name: str) -> None:
    fn, inputs, weights = _setup(name)

    def step() -> None:
        _backward(_forward(fn, inputs), inputs, weights)
        sync(DEVICE)

    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1)
    _record(benchmark, "full", name, lambda: step)
