"""Splitting errors and the pooling-backward decomposition (parity per arch: test_export_onnx.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gainx.export.decomp import adaptive_avg_pool2d_backward, convolution_backward, pool_by_matrices, pooling_matrix
from gainx.export.split import split_at_layer
from gainx.models import build_model


def test_split_refuses_layer_bypassed_by_a_skip_connection() -> None:
    model = build_model("resnet18", 3).eval()
    with pytest.raises(
        ValueError,
        match="read the output of module .layer3. \\(in module .layer4.0.downsample.\\), computed before it",
    ):
        split_at_layer(model, "layer4.0.conv1")  # the block's residual reads the block input


def test_split_names_the_attribute_read_from_the_body() -> None:
    class SizeFromInput(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean((2, 3)) * x.shape[-1]

    with pytest.raises(ValueError, match="read the model input .x. \\(in `.shape`\\)"):
        split_at_layer(SizeFromInput(), "conv")


class _CheckedStages(nn.Module):
    """Shape checks on a body tensor (as timm's BatchNormAct2d does) that nothing after the target layer uses."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stage = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        torch._assert(stem.ndim == 4, "expected 4D input")
        return self.fc(self.stage(stem).mean((2, 3)))


def test_split_drops_unused_shape_checks_on_the_body() -> None:
    model = _CheckedStages().eval()
    body, head = split_at_layer(model, "stage")
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(head(body(x)), model(x))
    assert not [n for n in head.graph.nodes if n.target is torch._assert]


class _CheckedStem(nn.Module):
    """Python control flow on the input's shape and dtype, as Hugging Face embeddings have."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise ValueError("expected 3 channels")
        return self.conv(x if x.dtype == self.conv.weight.dtype else x.to(self.conv.weight.dtype))


class _CheckedModel(nn.Module):
    def __init__(self, check_in_forward: bool) -> None:
        super().__init__()
        self.check_in_forward = check_in_forward
        self.stem = _CheckedStem()
        self.stage = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.check_in_forward and x.shape[-1] % 2:  # a test on a module that contains the target layer
            raise ValueError("expected an even width")
        return self.fc(self.stage(self.stem(x)).mean((2, 3)))


def test_split_calls_the_modules_before_the_target_layer_whole() -> None:
    model = _CheckedModel(check_in_forward=False).eval()
    body, head = split_at_layer(model, "stage.1")
    assert [n.target for n in body.graph.nodes if n.op == "call_module"] == ["stem", "stage.0", "stage.1"]
    for size in (8, 12):  # sizes stay symbolic
        x = torch.rand(2, 3, size, size)
        torch.testing.assert_close(head(body(x)), model(x))


def test_split_traces_shape_tests_on_the_path_to_the_layer_for_the_example_size() -> None:
    model = _CheckedModel(check_in_forward=True).eval()
    with pytest.raises(ValueError, match="cannot trace _CheckedModel .* control flow"):
        split_at_layer(model, "stage.1")
    x = torch.rand(2, 3, 8, 10)
    body, head = split_at_layer(model, "stage.1", example=x)
    torch.testing.assert_close(head(body(x)), model(x))
    torch.testing.assert_close(body(x), model.stage[:2](model.stem(x)))


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


@pytest.mark.parametrize(("n_in", "n_out"), [(16, 1), (13, 5), (2, 7), (6, (6,))])
def test_pool_by_matrices_replaces_adaptive_avg_pool1d(n_in: int, n_out: int | tuple[int]) -> None:
    pool = nn.Sequential(nn.AdaptiveAvgPool1d(n_out), nn.Flatten())
    matrix = pool_by_matrices(pool)
    assert not any(isinstance(m, nn.AdaptiveAvgPool1d) for m in matrix.modules())
    x = torch.randn(2, 3, n_in, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3 * (n_out if isinstance(n_out, int) else n_out[0]), dtype=torch.float64)
    (expected,) = torch.autograd.grad(pool(x), x, g)
    (got,) = torch.autograd.grad(matrix(x), x, g)
    torch.testing.assert_close(matrix(x), pool(x))
    torch.testing.assert_close(got, expected)


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


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation", "groups"),
    [((14, 21), 3, 2, 1, 1, 2), ((15, 11), 3, 2, 1, 1, 1), ((9, 9), 5, 3, 2, 2, 1), ((7, 8), 1, 1, 0, 1, 1)],
)
def test_convolution_backward_matches_autograd(
    size: tuple[int, int], kernel: int, stride: int, padding: int, dilation: int, groups: int
) -> None:
    conv = nn.Conv2d(4, 6, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups).double()
    x = torch.randn(2, 4, *size, dtype=torch.float64, requires_grad=True)
    y = conv(x)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, x, g)
    got, grad_weight, grad_bias = convolution_backward(
        g,
        x.detach(),
        conv.weight.detach(),
        None,
        conv.stride,
        conv.padding,
        conv.dilation,
        False,
        [0, 0],
        groups,
        [True, False, False],
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert grad_weight is None and grad_bias is None
