"""Splitting errors and the pooling-backward decomposition (parity per arch: test_export_onnx.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gainx.export.decomp import adaptive_avg_pool2d_backward, pooling_matrix
from gainx.export.split import split_at_layer
from gainx.models import build_model


def test_split_refuses_layer_bypassed_by_a_skip_connection() -> None:
    model = build_model("resnet18", 3).eval()
    with pytest.raises(ValueError, match="choose a target layer that separates"):
        split_at_layer(model, "layer4.0.conv1")  # the block's residual reads the block input


def test_split_unknown_layer_names_it() -> None:
    with pytest.raises(ValueError, match="'layer9' not found"):
        split_at_layer(build_model("resnet18", 3), "layer9")


def test_split_layer_called_twice() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    with pytest.raises(ValueError, match="called 2 times"):
        split_at_layer(Twice(), "conv")


@pytest.mark.parametrize(("n_in", "n_out"), [(7, 7), (2, 7), (13, 5), (5, 1), (1, 3), (6, 4)])
def test_pooling_matrix_matches_adaptive_avg_pool(n_in: int, n_out: int) -> None:
    x = torch.randn(2, 3, n_in, n_in + 2, dtype=torch.float64)
    p_h = pooling_matrix(n_in, n_out, x.dtype, x.device)
    p_w = pooling_matrix(n_in + 2, n_out + 1, x.dtype, x.device)
    expected = F.adaptive_avg_pool2d(x, (n_out, n_out + 1))
    torch.testing.assert_close(p_h @ x @ p_w.t(), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("size", "out"), [((2, 3), (7, 7)), ((9, 5), (4, 2)), ((4, 4), (1, 1))])
def test_adaptive_avg_pool2d_backward_matches_autograd(
    size: tuple[int, int], out: tuple[int, int], dtype: torch.dtype
) -> None:
    x = torch.randn(2, 3, *size, dtype=dtype, requires_grad=True)
    y = F.adaptive_avg_pool2d(x, out)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(adaptive_avg_pool2d_backward(g, x.detach()), expected, rtol=tol, atol=tol)
