"""bench/bench_class_attention.py: the pytorch-grad-cam row runs resnet18, so it is measured only where the other
rows of its group have resnet18's channels (its shape, bytes moved and group are theirs)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import bench.bench_class_attention as module


def test_the_grad_cam_row_is_skipped_at_other_channel_counts(monkeypatch):
    monkeypatch.setattr(module, "C", 64)
    benchmark = SimpleNamespace(extra_info={}, group=None)
    with pytest.raises(pytest.skip.Exception, match="compared at C = 512 only"):
        module.test_grad_cam(benchmark, module.MAIN, module.KS[0])
    assert benchmark.extra_info == {}  # nothing recorded for the row
