"""Decompositions used when tracing a head's vector-Jacobian product for ONNX.

Adaptive average pooling: ONNX has no lowering of its backward, and its forward
is exported as a fixed-kernel ``AveragePool`` valid only at the traced size.
It is linear: with the pooling matrices ``P_h`` (out_h, h) and ``P_w``
(out_w, w), where row ``i`` averages input positions
``[floor(i n / o), ceil((i + 1) n / o))``, ``y = P_h x P_w^T`` and its
vector-Jacobian product is ``dx = P_h^T dy P_w``: matmuls built from ``arange``,
valid for symbolic sizes (dynamic H, W). ``nn.AdaptiveAvgPool2d`` modules of
the head are replaced by that product before tracing, and
``nn.AdaptiveAvgPool1d`` ones by ``y = x P^T``
(:func:`pool_by_matrices`): for a 1x1 output ATen's own pooling is a mean
that it then restrides in place (``as_strided_``) when the input has
channels-last strides (Swin's permuted LayerNorm output), which torch.onnx
cannot convert (``as_strided_scatter``), and the table above never sees that
path.

Convolution: ``aten.convolution_backward`` has no ONNX lowering. For
``y = conv(x, W)`` along an axis of length n (stride s, padding p, dilation
d, kernel k, groups g, o outputs), the transposed convolution of ``dy`` with
the same ``W``, s, d, g and no padding gives the gradient of the zero-padded
input at positions ``[0, L)``, ``L = (o - 1) s + d (k - 1) + 1``; ``dx`` is
its window ``[p, p + n)``, zero where ``p + n > L`` (inputs no window
reached). One pad with ``(-p, n + p - L)`` (negative: crop) takes it, for
symbolic sizes too. Only the input gradient is decomposed (the traced VJP
is taken with respect to the features, not the weights).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


def pooling_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(n_out, n_in)`` matrix of adaptive average pooling along one axis."""
    i = torch.arange(n_out, device=device)
    start = torch.div(i * n_in, n_out, rounding_mode="floor")
    end = torch.div((i + 1) * n_in + n_out - 1, n_out, rounding_mode="floor")
    j = torch.arange(n_in, device=device)
    inside = (j.unsqueeze(0) >= start.unsqueeze(1)) & (j.unsqueeze(0) < end.unsqueeze(1))
    return inside.to(dtype) / (end - start).unsqueeze(1).to(dtype)


def adaptive_avg_pool2d_backward(grad_output: Tensor, self: Tensor) -> Tensor:
    """``dx = P_h^T dy P_w`` for ``y = adaptive_avg_pool2d(x)`` (see module docstring)."""
    p_h = pooling_matrix(self.shape[-2], grad_output.shape[-2], grad_output.dtype, grad_output.device)
    p_w = pooling_matrix(self.shape[-1], grad_output.shape[-1], grad_output.dtype, grad_output.device)
    return torch.matmul(torch.matmul(p_h.t(), grad_output), p_w)


def adaptive_avg_pool2d(self: Tensor, output_size: Sequence[int]) -> Tensor:
    """``y = P_h x P_w^T`` (see module docstring)."""
    p_h = pooling_matrix(self.shape[-2], output_size[0], self.dtype, self.device)
    p_w = pooling_matrix(self.shape[-1], output_size[1], self.dtype, self.device)
    return torch.matmul(torch.matmul(p_h, self), p_w.t())


def convolution_backward(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    bias_sizes: Sequence[int] | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    output_mask: Sequence[bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None] | Any:
    """Input gradient of a (non-transposed) convolution as a transposed convolution (module docstring)."""
    if transposed or output_mask[1] or output_mask[2] or not output_mask[0]:
        return NotImplemented  # weight / bias gradients, transposed convolutions: not needed for the head VJP
    spatial = range(2, input.dim())
    zeros = [0] * len(spatial)
    full = torch.ops.aten.convolution(grad_output, weight, None, stride, zeros, dilation, True, zeros, groups)
    pads = []
    for i in reversed(spatial):  # F.pad order: last dim first
        p = padding[i - 2]
        pads += [-p, input.shape[i] + p - full.shape[i]]
    return torch.nn.functional.pad(full, pads), None, None


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as pooling-matrix products (:func:`adaptive_avg_pool2d`)."""

    def __init__(self, output_size: int | None | Sequence[int | None]) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        size = [self.output_size] * 2 if not isinstance(self.output_size, Sequence) else list(self.output_size)
        return adaptive_avg_pool2d(x, [x.shape[-2 + i] if o is None else o for i, o in enumerate(size)])


class MatrixAdaptiveAvgPool1d(nn.Module):
    """``nn.AdaptiveAvgPool1d`` as one pooling-matrix product, ``y = x P^T`` (Hugging Face Swin's pooler)."""

    def __init__(self, output_size: int | Sequence[int]) -> None:
        super().__init__()
        self.output_size = output_size[0] if isinstance(output_size, Sequence) else output_size

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(x, pooling_matrix(x.shape[-1], self.output_size, x.dtype, x.device).t())


def pool_by_matrices(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose ``nn.AdaptiveAvgPool1d/2d`` submodules are pooling-matrix products."""
    module = copy.deepcopy(module)
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.AdaptiveAvgPool2d) and name:
            module.set_submodule(name, MatrixAdaptiveAvgPool2d(child.output_size))
        elif isinstance(child, nn.AdaptiveAvgPool1d) and name:
            module.set_submodule(name, MatrixAdaptiveAvgPool1d(child.output_size))
    return module


def export_decompositions() -> dict:
    """Core ATen decompositions plus the ones above (for ``make_fx``)."""
    from torch._decomp import core_aten_decompositions

    aten = torch.ops.aten
    table = dict(core_aten_decompositions())
    table[aten._adaptive_avg_pool2d.default] = adaptive_avg_pool2d
    table[aten._adaptive_avg_pool2d_backward.default] = adaptive_avg_pool2d_backward
    table[aten.convolution_backward.default] = convolution_backward
    return table
