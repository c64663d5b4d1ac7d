"""Batched Grad-CAM maps (paper eq. 1-2) with fused C++/CUDA kernels.

Both ops produce, per map, the normalized attention of
:mod:`gainx.ops.cam` at the requested resolution ``(H, W)``:

* ``A = ReLU(sum_k w_k F_k)`` at feature resolution (eq. 2), with Grad-CAM
  weights ``w = GAP(G)`` (eq. 1);
* ``U = up(A)``, bilinear, ``align_corners=False``;
* ``Y = (U - min U) / (max U - min U + eps |max U|)`` (``eps`` relative to the
  peak, so maps do not depend on the scale of the scores; a constant map gives zeros).

:func:`gradcam` takes features and gradients. :func:`class_attention` serves
a GAP + linear head (see :func:`gainx.attention.head.find_linear_head`): the
gradient of the class-``c`` score w.r.t. ``F`` is ``weight[c] / (h w)`` at
every position, so ``w = weight[c] / (h w)`` without any backward pass, and the
maps of all requested classes are one batched product ``W_sel x F``.

The ops run ``torch.ops.gainx.*`` from the extension ``gainx._C`` when it is
loaded and has kernels for the device, the eager references otherwise.
Gradients (w.r.t. features and weight / grads) are those of the eager
references; the fake kernels make the ops traceable (torch.compile, export).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gainx.ops import extension
from gainx.ops.cam import EPS, gradcam_raw, normalize_cam, upsample, weighted_maps

__all__ = ["class_attention", "class_attention_eager", "gradcam", "gradcam_eager"]


def class_attention_eager(
    features: Tensor, weight: Tensor, classes: Tensor, out_size: Sequence[int], eps: float = EPS
) -> Tensor:
    """Reference: ``(B, C, h, w)``, ``(num_classes, C)``, ``(B, K)`` -> ``(B, K, H, W)``.

    Equals :func:`gradcam_eager` with the gradient ``G = weight[c] / (h w)``
    broadcast over the ``h x w`` positions, without materializing it.
    """
    h, w = features.shape[-2:]
    rows = weight.index_select(0, classes.reshape(-1)).reshape(*classes.shape, weight.shape[1]) / (h * w)
    return weighted_maps(rows, features, _size(out_size), eps).to(features.dtype)


def gradcam_eager(features: Tensor, grads: Tensor, out_size: Sequence[int], eps: float = EPS) -> Tensor:
    """Reference: ``(P, C, h, w)`` features and gradients -> ``(P, H, W)`` maps."""
    size = _size(out_size)
    return upsample(normalize_cam(gradcam_raw(features, grads), size, eps), size)


def class_attention(
    features: Tensor, weight: Tensor, classes: Tensor, out_size: Sequence[int], eps: float = EPS
) -> Tensor:
    """Normalized Grad-CAM maps of ``classes`` for a GAP + linear head.

    Args:
        features: ``(B, C, h, w)`` target-layer output.
        weight: ``(num_classes, C)`` weight of the linear layer after the GAP.
        classes: ``(B, K)`` int64, the classes to map for each image.
        out_size: ``(H, W)`` of the maps (usually the image size).

    Returns:
        ``(B, K, H, W)`` maps in ``[0, 1]``, same dtype and device as ``features``.

    Raises:
        ValueError: for bad shapes, devices or ``out_size``, and for a class
            outside ``[0, num_classes)``, except on CUDA with the extension:
            there the kernels check the classes on the device (a device-side
            assert naming the class), so the call never waits for the GPU.
    """
    size = _size(out_size)
    if extension.supports(features.device):
        return torch.ops.gainx.class_attention(features, weight, classes, list(size), eps)
    _check_class_attention(features, weight, classes)
    _check_classes_range(classes, weight.shape[0])
    return class_attention_eager(features, weight, classes, size, eps)


def gradcam(features: Tensor, grads: Tensor, out_size: Sequence[int], eps: float = EPS) -> Tensor:
    """Normalized Grad-CAM maps from ``(P, C, h, w)`` features and gradients -> ``(P, H, W)``."""
    size = _size(out_size)
    if extension.supports(features.device):
        return torch.ops.gainx.gradcam(features, grads, list(size), eps)
    _check_gradcam(features, grads)
    return gradcam_eager(features, grads, size, eps)


def _size(out_size: Sequence[int]) -> tuple[int, int]:
    size = tuple(int(s) for s in out_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"out_size must be two positive ints (H, W), got {tuple(out_size)}")
    return size  # type: ignore[return-value]


def _check_features(op: str, features: Tensor) -> None:
    if features.dim() != 4:
        raise ValueError(f"{op}: features must be a 4-D (B, C, h, w) tensor, got shape {list(features.shape)}")
    if not features.is_floating_point():
        raise TypeError(f"{op}: features must be a floating-point tensor, got dtype {features.dtype}")
    if features.shape[2] == 0 or features.shape[3] == 0:
        raise ValueError(f"{op}: features must have a non-empty spatial size (h, w), got shape {list(features.shape)}")


def _check_same(op: str, name: str, t: Tensor, features: Tensor) -> None:
    if t.device != features.device:
        raise ValueError(f"{op}: {name} is on {t.device} but features is on {features.device}")
    if t.dtype != features.dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype} but features has dtype {features.dtype}")


def _check_class_attention(features: Tensor, weight: Tensor, classes: Tensor) -> None:
    """Shapes, dtypes and devices (the value range of ``classes`` is data-dependent)."""
    op = "gainx.class_attention"
    _check_features(op, features)
    if weight.dim() != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(
            f"{op}: weight must be (num_classes, C) with C = features.size(1) = {features.shape[1]}, "
            f"got shape {list(weight.shape)}"
        )
    _check_same(op, "weight", weight, features)
    if classes.dim() != 2 or classes.shape[0] != features.shape[0]:
        raise ValueError(
            f"{op}: classes must be (B, K) with B = features.size(0) = {features.shape[0]}, "
            f"got shape {list(classes.shape)}"
        )
    if classes.dtype != torch.int64:
        raise TypeError(f"{op}: classes must be int64, got dtype {classes.dtype}")
    if classes.device != features.device:
        raise ValueError(f"{op}: classes is on {classes.device} but features is on {features.device}")


def _check_classes_range(classes: Tensor, num_classes: int) -> None:
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        raise ValueError(
            f"gainx.class_attention: classes must lie in [0, {num_classes}), got values in "
            f"[{int(classes.min())}, {int(classes.max())}]"
        )


def _check_gradcam(features: Tensor, grads: Tensor) -> None:
    op = "gainx.gradcam"
    _check_features(op, features)
    if grads.shape != features.shape:
        raise ValueError(f"{op}: grads must have the shape of features {list(features.shape)}, got {list(grads.shape)}")
    _check_same(op, "grads", grads, features)


def _register() -> None:
    """Fake kernels and autograd of the ``torch.ops.gainx`` ops (schemas: csrc/ops/).

    The backward is the vector-Jacobian product of the eager reference (it
    re-runs the forward in eager PyTorch), so gradients are the reference's,
    including ``amin`` / ``amax``'s handling of ties; only the forward is fused.
    """

    @torch.library.register_fake("gainx::class_attention")
    def _(features: Tensor, weight: Tensor, classes: Tensor, out_size: list[int], eps: float = EPS) -> Tensor:
        _check_class_attention(features, weight, classes)
        return features.new_empty(classes.shape[0], classes.shape[1], *_size(out_size))

    @torch.library.register_fake("gainx::gradcam")
    def _(features: Tensor, grads: Tensor, out_size: list[int], eps: float = EPS) -> Tensor:
        _check_gradcam(features, grads)
        return features.new_empty(features.shape[0], *_size(out_size))

    def setup_class_attention(ctx, inputs, output) -> None:  # noqa: ANN001
        features, weight, classes, ctx.out_size, ctx.eps = inputs
        ctx.save_for_backward(features, weight, classes)

    def backward_class_attention(ctx, grad: Tensor):  # noqa: ANN001, ANN202
        features, weight, classes = ctx.saved_tensors
        _, vjp = torch.func.vjp(
            lambda f, w: class_attention_eager(f, w, classes, ctx.out_size, ctx.eps), features, weight
        )
        return (*vjp(grad), None, None, None)

    def setup_gradcam(ctx, inputs, output) -> None:  # noqa: ANN001
        features, grads, ctx.out_size, ctx.eps = inputs
        ctx.save_for_backward(features, grads)

    def backward_gradcam(ctx, grad: Tensor):  # noqa: ANN001, ANN202
        _, vjp = torch.func.vjp(lambda f, g: gradcam_eager(f, g, ctx.out_size, ctx.eps), *ctx.saved_tensors)
        return (*vjp(grad), None, None)

    torch.library.register_autograd(
        "gainx::class_attention", backward_class_attention, setup_context=setup_class_attention
    )
    torch.library.register_autograd("gainx::gradcam", backward_gradcam, setup_context=setup_gradcam)


if extension.load() is not None:
    _register()
