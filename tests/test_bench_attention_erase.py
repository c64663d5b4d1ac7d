"""bench/bench_attention_erase.py: each phase's measurements run as they do on CUDA, where the peak-memory and
device-time helpers call the step (on CPU they return NaN without calling it)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

import bench.bench_attention_erase as module


def _calls(counter: list[int]):
    def measure(fn, device) -> float:
        fn()
        counter.append(1)
        return 1.0

    return measure


@pytest.mark.parametrize("phase", ["test_forward", "test_backward", "test_full"])
def test_every_measurement_gets_a_step_it_can_run(monkeypatch, phase):
    calls: list[int] = []
    monkeypatch.setattr(module, "SHAPE", (1, 2, 8, 3, 3, 16, 16))
    monkeypatch.setattr(module, "peak_memory_mb", _calls(calls))
    monkeypatch.setattr(module, "device_time_ms", _calls(calls))

    def pedantic(step, setup=None, rounds=1, warmup_rounds=0):
        args, kwargs = setup() if setup else ((), {})
        step(*args, **kwargs)

    benchmark = SimpleNamespace(extra_info={}, stats=None, pedantic=pedantic)
    getattr(module, phase)(benchmark, "eager")
    assert len(calls) == 2  # peak memory and device time, each ran the step once
    assert benchmark.extra_info["peak_mem_mb"] == 1.0 and math.isclose(benchmark.extra_info["device_time_ms"], 1.0)
