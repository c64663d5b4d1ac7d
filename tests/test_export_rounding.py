"""Map verification that tells float32 rounding (amplified by cancellation in eq. 2) from a wrong graph."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gainx.attention import attention_maps
from gainx.export import ExportVerificationError, export_onnx, onnx_export
from gainx.export.verify import FP32_ATOL, ROUNDING_MARGIN, check_maps
from gainx.runtime import AttentionSession

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


class _Cancelling(nn.Module):
    """A grouped-convolution body whose channels share a large offset that the zero-sum head rows cancel.

    ``F_k = 1000 + f_k``, ``sum_k w_ck = 0``: the map ``sum_k w_ck F_k`` is
    ``sum_k w_ck f_k`` (a range of a few units) computed from terms near 1000,
    so the float32 rounding of F (steps of 6e-5 at 1000) moves the normalized
    maps by ~1e-3, in PyTorch and in ONNX Runtime alike, as the 400 cancelling
    channels of torchvision's regnet_x_400mf do at 64x64 (2x2 feature maps).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, groups=8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 3)
        with torch.no_grad():
            self.conv2.bias.fill_(1e3)
            self.fc.weight -= self.fc.weight.mean(1, keepdim=True)
            self.fc.bias[0] = 10.0  # scores are held to 1e-4 of the largest one (here ~10), maps each on its own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def test_rounding_amplified_by_cancellation_is_not_a_graph_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = _Cancelling().eval()
    found: dict[str, float] = {}
    verify = onnx_export.verify_onnx
    monkeypatch.setattr(onnx_export, "verify_onnx", lambda *a, **k: found.update(verify(*a, **k)) or found)
    path = export_onnx(model, tmp_path / "m.onnx", target_layer="conv2", image_size=(16, 16), mean=MEAN, std=STD)
    # ONNX Runtime and PyTorch float32 disagree by more than 1e-4, and PyTorch is itself that far from float64
    assert found["attention"] > FP32_ATOL and found["pytorch_fp64"] > FP32_ATOL
    assert found["attention_fp64"] <= FP32_ATOL + ROUNDING_MARGIN * found["pytorch_fp64"]

    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[0, 1, 2]] * 4)
    onnx_maps = torch.from_numpy(AttentionSession(path).run(images, class_ids=ids).attention).double()
    x = (images - 0.5) / 0.25
    f32 = attention_maps(model, x, "conv2", classes=ids)[1].double()
    f64 = attention_maps(copy.deepcopy(model).double(), x.double(), "conv2", classes=ids)[1]
    onnx_err, torch_err = float((onnx_maps - f64).abs().max()), float((f32 - f64).abs().max())
    assert torch_err > FP32_ATOL and onnx_err <= FP32_ATOL + ROUNDING_MARGIN * torch_err


def _maps(value: float) -> np.ndarray:
    return np.full((1, 2, 4, 4), value, dtype=np.float32)


def test_map_check_uses_float64_only_to_excuse_pytorch_rounding() -> None:
    exact = torch.full((1, 2, 4, 4), 0.5, dtype=torch.float64)
    never = lambda: pytest.fail("float64 maps computed although every map is within atol")
    assert check_maps("case", _maps(0.50005), torch.from_numpy(_maps(0.5)), never, FP32_ATOL)["attention"] < 1e-4
    # PyTorch float32 is 1e-3 off the exact maps: ONNX may be off by atol + twice that, not more
    ok = check_maps("case", _maps(0.5018), torch.from_numpy(_maps(0.501)), lambda: exact, FP32_ATOL)
    assert ok["pytorch_fp64"] == pytest.approx(1e-3, rel=1e-3) and ok["attention_fp64"] > 1e-3
    with pytest.raises(ExportVerificationError, match=r"map \(0, 0\) is 0.0022 from the float64 map"):
        check_maps("case", _maps(0.4978), torch.from_numpy(_maps(0.501)), lambda: exact, FP32_ATOL)
    # PyTorch exact, ONNX 2e-4 off: a wrong graph, refused
    with pytest.raises(ExportVerificationError, match=r"map \(0, 0\) is 0.0002 from the float64 map"):
        check_maps("case", _maps(0.5002), torch.from_numpy(_maps(0.5)), lambda: exact, FP32_ATOL)
    with pytest.raises(ExportVerificationError, match="cannot run in float64"):
        check_maps("case", _maps(0.51), torch.from_numpy(_maps(0.5)), lambda: 1 / 0, FP32_ATOL)
    with pytest.raises(ExportVerificationError):
        check_maps("case", _maps(float("nan")), torch.from_numpy(_maps(0.5)), lambda: exact, FP32_ATOL)
