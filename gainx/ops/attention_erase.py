"""The attention-mining step: attention -> soft mask -> erased image (paper eq. 1-4).

For P (image, class) pairs with target-layer features ``F`` and gradients ``G``
(``(P, C, h, w)``) and images ``I``:

* ``cam``: the normalized Grad-CAM map of each pair at feature resolution
  (eq. 1-2, :mod:`gainx.ops.cam`), ``N = up(cam)`` in ``[0, 1]``;
* soft mask    ``T = sigmoid(omega (N - sigma))``                   (eq. 4)
* erased image ``I* = I[index] - T * I[index]``                     (eq. 3)

:func:`attention_erase_eager` is the plain-PyTorch reference (any device, the
CPU path). :func:`attention_erase` runs the step on a chosen *backend*, the one
seam behind which it runs: ``"eager"`` (the reference), ``"triton"`` (fused
Triton kernels, :mod:`gainx.ops.attention_erase_triton`, on CUDA or under
``TRITON_INTERPRET=1``), ``"fused"`` (redesigned Triton kernels with fewer
launches and no host work, :mod:`gainx.ops.attention_erase_fused`, same
devices) and ``"auto"`` (triton on CUDA tensors when it can be imported, eager
otherwise). Every backend has the reference's signature and
semantics and returns :class:`ErasedPairs`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from gainx._extras import require
from gainx.ops.cam import EPS, gradcam_raw, normalize_cam, upsample


class ErasedPairs(NamedTuple):
    """What the attention-mining step produces for P (image, class) pairs."""

    cam: Tensor  # (P, h, w) normalized low-resolution attention, up(cam) in [0, 1]
    erased: Tensor  # (P, 3, H, W) erased images I*


def soft_mask(maps: Tensor, sigma: float, omega: float) -> Tensor:
    """``T(A) = sigmoid(omega (A - sigma))`` (eq. 4)."""
    return torch.sigmoid(omega * (maps - sigma))


def attention_erase_eager(
    features: Tensor,
    grads: Tensor,
    images: Tensor,
    index: Tensor,
    sigma: float = 0.5,
    omega: float = 10.0,
    eps: float = EPS,
) -> ErasedPairs:
    """Reference implementation (see the module docstring).

    Args:
        features: ``(P, C, h, w)`` target-layer activations, one row per pair.
        grads: ``(P, C, h, w)`` d score_c / d features for that pair's class;
            carry a graph (``create_graph=True``) for second-order GAIN.
        images: ``(B, 3, H, W)`` network inputs.
        index: ``(P,)`` int64, the image of each pair (several classes of one
            image share it; the image is never copied by the caller).
    """
    size = (images.shape[-2], images.shape[-1])
    cam = normalize_cam(gradcam_raw(features, grads), size, eps)
    mask = soft_mask(upsample(cam, size), sigma, omega).unsqueeze(1)
    source = images.index_select(0, index)
    return ErasedPairs(cam=cam, erased=source - mask.to(source.dtype) * source)


Impl = Callable[..., ErasedPairs]


def _triton_backend(module: str, name: str, feature: str) -> Callable[[], Impl]:
    """A loader that imports ``module.name`` (a Triton backend) when first asked for it."""

    def load() -> Impl:
        require("triton", extra="triton", feature=feature)
        return getattr(importlib.import_module(module), name)

    return load


_BACKENDS: dict[str, Callable[[], Impl]] = {
    "eager": lambda: attention_erase_eager,
    "triton": _triton_backend(
        "gainx.ops.attention_erase_triton", "attention_erase_triton", "the Triton attention-mining backend"
    ),
    "fused": _triton_backend(
        "gainx.ops.attention_erase_fused", "attention_erase_fused", "the fused Triton attention-mining backend"
    ),
}


def register_backend(name: str, loader: Callable[[], Impl]) -> None:
    """Register ``loader`` (called lazily, returns the implementation) under ``name``."""
    _BACKENDS[name] = loader


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def resolve_backend(name: str, device: torch.device) -> str:
    """Turn ``"auto"`` into a concrete backend name for tensors on ``device``."""
    if name != "auto":
        if name not in _BACKENDS:
            raise ValueError(f"unknown backend {name!r}; choose one of {['auto', *available_backends()]}")
        return name
    if device.type == "cuda":
        try:
            _BACKENDS["triton"]()
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
    """Run the attention-mining step (eq. 1-4) on the chosen backend (see the module docstring)."""
    impl = _BACKENDS[resolve_backend(backend, images.device)]()
    return impl(features, grads, images, index, sigma=sigma, omega=omega)
