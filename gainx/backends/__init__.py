"""The one seam behind which the attention -> mask -> erase step runs.

``attention_erase(..., backend=name)`` dispatches to a registered implementation.
Every implementation has the signature and semantics of
:func:`gainx.attention.erase.attention_erase_eager` (the reference) and returns
:class:`gainx.attention.erase.ErasedPairs`.

Backends: ``"eager"`` (plain PyTorch, any device), ``"triton"`` (fused Triton
kernels, CUDA or ``TRITON_INTERPRET=1``), and ``"auto"``: triton on CUDA
tensors when it is available, eager otherwise.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from gainx.attention.erase import ErasedPairs, attention_erase_eager

Impl = Callable[..., ErasedPairs]
_REGISTRY: dict[str, Callable[[], Impl]] = {"eager": lambda: attention_erase_eager}


def register_backend(name: str, loader: Callable[[], Impl]) -> None:
    """Register ``loader`` (called lazily, returns the implementation) under ``name``."""
    _REGISTRY[name] = loader


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def _triton_loader() -> Impl:
    from gainx.ops.attention_erase import attention_erase_triton

    return attention_erase_triton


register_backend("triton", _triton_loader)


def resolve_backend(name: str, device: torch.device) -> str:
    """Turn ``"auto"`` into a concrete backend name for tensors on ``device``."""
    if name != "auto":
        if name not in _REGISTRY:
            raise ValueError(f"unknown backend {name!r}; choose one of {['auto', *available_backends()]}")
        return name
    if device.type == "cuda":
        try:
            _REGISTRY["triton"]()
            return "triton"
        except ImportError:
            return "eager"
    return "eager"


def attention_erase(
    features: Tensor,
    grads: Tensor,
    images: Tensor,
    index: Tensor,
    sigma: float = 0.5,
    omega: float = 10.0,
    backend: str = "auto",
) -> ErasedPairs:
    """Run the attention-mining step (eq. 1-4) on the chosen backend."""
    impl = _REGISTRY[resolve_backend(backend, images.device)]()
    return impl(features, grads, images, index, sigma=sigma, omega=omega)
