"""Forward passes whose graph is differentiated twice."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from torch.nn.attention import SDPBackend, sdpa_kernel


def twice_differentiable(enabled: bool) -> AbstractContextManager:
    """A context for a forward pass whose gradients are taken with ``create_graph=True`` and then backpropagated
    (Grad-CAM weights differentiated, input-gradient losses): ``scaled_dot_product_attention`` restricted to its
    math kernel, the one with a double backward (the fused flash and memory-efficient kernels have none, on CPU
    and GPU). A no-op when not ``enabled``."""
    return sdpa_kernel([SDPBackend.MATH]) if enabled else nullcontext()
