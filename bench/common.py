"""Shared benchmark helpers: device choice, quick mode, CUDA peak memory and peak bandwidth, the benchmarks'
resnet18."""

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


# Peak DRAM bandwidth in bytes/s by device name (substring of torch.cuda.get_device_name(), first match wins),
# for when torch does not report the memory clock and bus width. Source: NVIDIA's data sheets, H200 SXM 4.8 TB/s,
# H100 PCIe 2.0 TB/s, H100 SXM5 3.35 TB/s.
PEAK_BANDWIDTH_BY_NAME = (("H200", 4.8e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12))


def peak_bandwidth(device: torch.device) -> tuple[float, str] | None:
    """Peak DRAM bandwidth of a CUDA device in bytes/s, and where the number comes from; None on CPU or when unknown.

    From the device properties when torch reports them: double data rate, so
    ``2 * memory_clock_rate [kHz] * 1e3 * memory_bus_width [bit] / 8``; else
    :data:`PEAK_BANDWIDTH_BY_NAME`.
    """
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz > 0 and bus_bits > 0:
        return 2 * clock_khz * 1e3 * bus_bits / 8, f"device properties: {clock_khz / 1e3:g} MHz x {bus_bits} bit DDR"
    return next(((bw, f"data sheet value for {key}") for key, bw in PEAK_BANDWIDTH_BY_NAME if key in props.name), None)


def device_time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Summed duration (ms) of the device kernels one call of ``fn`` runs, from the torch profiler: the time the
    GPU works, without the host's launch and Python overhead (which shows as wall time above it). NaN off CUDA."""
    if device.type != "cuda":
        return float("nan")
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1e3


def record_device_bandwidth(
    info: dict[str, object], moved: float, device_ms: float, device: torch.device
) -> tuple[float, str] | None:
    """Store in ``info`` ``device_time_ms`` and, where the peak is known (:func:`peak_bandwidth`), the peak and
    ``device_bandwidth_frac_of_peak`` = ``moved`` bytes / device time / peak; return the peak."""
    info["device_time_ms"] = device_ms
    peak = peak_bandwidth(device)
    if peak:
        info["peak_bandwidth_gbs"], info["peak_bandwidth_source"] = peak[0] / 1e9, peak[1]
        if device_ms > 0:
            info["device_bandwidth_frac_of_peak"] = moved / (device_ms / 1e3) / peak[0]
    return peak
