"""Eager reference of the attention -> soft mask -> erase step (paper eq. 1-4).

This is the plain-PyTorch definition every backend must match; it is also the
CPU path. One row ("pair") per (image, class):

* weights      ``w_k = GAP(G_k)``                                  (eq. 1)
* attention    ``A = ReLU(sum_k w_k F_k)`` at feature resolution   (eq. 2)
* the map is bilinearly upsampled to the image size (``align_corners=False``)
  and min-max normalized per pair with the statistics of the *upsampled* map:
  ``N = (up(A) - min) / (max - min + eps)``; a map whose range is below
  ``FLAT = 1e-5`` of its maximum (constant up to rounding noise of the
  interpolation) gives zeros, never NaN or amplified noise;
* soft mask    ``T = sigmoid(omega (N - sigma))``                  (eq. 4)
* erased image ``I* = I - T * I``                                  (eq. 3)

Because bilinear upsampling is linear and preserves constants, the normalized
low-resolution map ``cam = (A - min) / (max - min + eps)`` satisfies
``up(cam) == N`` exactly; backends return ``cam`` (small) and callers upsample
it only where a full-resolution map is needed (L_e, display).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-7
FLAT = 1e-5


class ErasedPairs(NamedTuple):
    """What the attention-mining step produces for P (image, class) pairs."""

    cam: Tensor  # (P, h, w) normalized low-resolution attention, up(cam) in [0, 1]
    erased: Tensor  # (P, 3, H, W) erased images I*


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``(..., h, w)`` maps to ``size`` (align_corners=False)."""
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def gradcam_raw(features: Tensor, grads: Tensor) -> Tensor:
    """``ReLU(sum_k GAP(G_k) F_k)`` for ``(P, C, h, w)`` features and gradients (eq. 1-2)."""
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * features).sum(dim=1))


def normalize_cam(cam: Tensor, size: tuple[int, int], eps: float = EPS) -> Tensor:
    """Min-max normalize ``(P, h, w)`` maps by the range of their upsampled version.

    Flat maps (range <= FLAT x max, see the module docstring) become zeros.
    """
    up = upsample(cam, size)
    lo = up.amin(dim=(-2, -1), keepdim=True)
    hi = up.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    flat = span <= FLAT * hi.abs()
    return torch.where(flat, torch.zeros_like(cam), (cam - lo) / (span + eps))


def weighted_maps(weights: Tensor, features: Tensor, size: tuple[int, int], eps: float = EPS) -> Tensor:
    """Normalized maps of K weight vectors per image at resolution ``size``.

    ``weights`` ``(N, K, C)`` (Grad-CAM weights, eq. 1), ``features``
    ``(N, C, h, w)`` -> ``(N, K, H, W)``: ``ReLU(sum_k w_k F_k)`` (eq. 2),
    normalized by the range of its upsampling (:func:`normalize_cam`) and
    upsampled. Computed in fp32 at least (fp64 stays fp64).
    """
    cam = F.relu(torch.einsum("nkc,nchw->nkhw", weights, features))
    cam = cam.to(torch.promote_types(cam.dtype, torch.float32))
    n, k, h, w = cam.shape
    return upsample(normalize_cam(cam.reshape(n * k, h, w), size, eps), size).reshape(n, k, *size)


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
    """Reference implementation (see module docstring).

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
