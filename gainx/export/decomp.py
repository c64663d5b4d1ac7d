"""Decompositions used when tracing a head's vector-Jacobian product for ONNX.

``aten._adaptive_avg_pool2d_backward`` has no ONNX lowering. Adaptive average
pooling is linear: with the pooling matrices ``P_h`` (out_h, h) and ``P_w``
(out_w, w), where row ``i`` averages input positions
``[floor(i n / o), ceil((i + 1) n / o))``, ``y = P_h x P_w^T`` and its
vector-Jacobian product is ``dx = P_h^T dy P_w``: matmuls built from ``arange``,
valid for symbolic sizes (dynamic H, W).
"""

from __future__ import annotations

import torch
from torch import Tensor


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


def export_decompositions() -> dict:
    """Core ATen decompositions plus the ones above (for ``make_fx``)."""
    from torch._decomp import core_aten_decompositions

    table = dict(core_aten_decompositions())
    table[torch.ops.aten._adaptive_avg_pool2d_backward.default] = adaptive_avg_pool2d_backward
    return table
