"""What an erased region is filled with: the image's own surroundings (pull-push).

Eq. 3 erases to zero, ``I* = I - T * I``. Where an object's class is its outline, a zero fill leaves the
outline (a flat silhouette of the object's shape) and the class can still be read off it. Filling the region
from its surroundings instead, ``I* = I - T * (I - F)``, leaves no silhouette. ``F`` is the weighted mean of
the pixels around each pixel, weighted by how much of them is kept (``K = 1 - T``), found coarse to fine in
the pull-push manner (Gortler et al. 1996, "The Lumigraph"):

* pull: ``K_0 = K``, ``J_0 = K * I``; each level halves the last one's resolution by area averaging,
  ``K_{l+1} = avg(K_l)``, ``J_{l+1} = avg(J_l)`` (``J_l / K_l`` is the mean of the kept pixels of a cell);
* push: at the coarsest level (1x1) ``F_L = J_L / max(K_L, eps)``; going finer, a cell keeps its own kept
  pixels in proportion to how much of it is kept and takes the rest from the level above,
  ``F_l = J_l + (1 - K_l) up(F_{l+1})``; the fill of the full resolution is ``F = up(F_1)`` (a pixel is never
  filled with itself). ``up`` is bilinear upsampling.

A region erased whole takes the mean colour of what surrounds it at the region's own scale; an image erased
whole is filled with zero (eq. 3's fill).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

FILL_EPS = 1e-6
ERASE_FILLS = ("zero", "context")  # what an erased region holds (:func:`erase`)


def context_fill(images: Tensor, kept: Tensor) -> Tensor:
    """``(N, C, H, W)`` fill ``F`` of the module docstring for ``images`` ``(N, C, H, W)`` and the fraction
    ``kept`` ``(N, 1, H, W)`` of each pixel that is kept (``1 - T``, in ``[0, 1]``)."""
    if images.dim() != 4 or kept.dim() != 4 or kept.shape[1] != 1 or kept.shape[0] != images.shape[0]:
        raise ValueError(
            f"expected images (N, C, H, W) and kept (N, 1, H, W), got {tuple(images.shape)} and {tuple(kept.shape)}"
        )
    if kept.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"kept {tuple(kept.shape)} and images {tuple(images.shape)} differ in size")
    kept = kept.to(images.dtype)
    levels = [(kept * images, kept)]
    while max(levels[-1][1].shape[-2:]) > 1:
        _, weight = levels[-1]
        size = (math.ceil(weight.shape[-2] / 2), math.ceil(weight.shape[-1] / 2))
        levels.append(tuple(F.adaptive_avg_pool2d(t, size) for t in levels[-1]))
    weighted, weight = levels[-1]
    fill = weighted / weight.clamp_min(FILL_EPS)
    for weighted, weight in reversed(levels[1:-1]):
        fill = weighted + (1 - weight) * _up(fill, weight)
    return _up(fill, images)


def _up(fill: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(fill, size=like.shape[-2:], mode="bilinear", align_corners=False)


def erase(images: Tensor, masks: Tensor, fill: str = "zero") -> Tensor:
    """``(N, C, H, W)`` images erased by soft masks ``T`` ``(N, H, W)``: ``I - T * I`` with ``fill="zero"``
    (eq. 3), ``I - T * (I - F)`` with ``fill="context"`` (``F``: :func:`context_fill` of what ``T`` keeps,
    a constant to the gradient)."""
    if fill not in ERASE_FILLS:
        raise ValueError(f"fill must be one of {ERASE_FILLS}, got {fill!r}")
    if images.dim() != 4 or masks.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"erase takes images (N, C, H, W) and masks (N, H, W) of the same N, H, W; got images "
            f"{tuple(images.shape)} and masks {tuple(masks.shape)}"
        )
    masks = masks.unsqueeze(1).to(images.dtype)
    if fill == "zero":
        return images - masks * images
    background = context_fill(images.detach(), 1 - masks.detach())
    return images - masks * (images - background)
