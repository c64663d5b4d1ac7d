"""Eager Grad-CAM map math (paper eq. 1-2), the reference every kernel matches.

Plain PyTorch, any device; the Triton kernels (:mod:`gainx.ops.attention_erase_triton`)
and the C++/CUDA extension (:mod:`gainx.ops.class_attention`) compute the same
quantities and are tested against these functions. One row ("pair") per
(image, class):

* weights      ``w_k = GAP(G_k)``                                  (eq. 1)
* attention    ``A = ReLU(sum_k w_k F_k)`` at feature resolution   (eq. 2)
* the map is bilinearly upsampled to the image size (``align_corners=False``)
  and min-max normalized per pair with the statistics of the *upsampled* map:
  ``N = (up(A) - min) / (max - min + eps |max|)``; a map whose range is below
  ``FLAT = 1e-5`` of its maximum (constant up to rounding noise of the
  interpolation) gives zeros, never NaN or amplified noise. ``eps`` is relative
  to the map's maximum, so ``N`` does not depend on the scale of the scores
  (``s A`` and ``A`` give the same map for any ``s > 0``): a map whose raw peak
  is 1e-8 (freshly initialized networks) normalizes like one whose peak is 1.

The soft mask and erase step built on these maps (eq. 3-4) are in
:mod:`gainx.ops.attention_erase`.

Because bilinear upsampling is linear and preserves constants, the normalized
low-resolution map ``cam = (A - min) / (max - min + eps |max|)`` satisfies
``up(cam) == N`` exactly; the attention-mining step returns ``cam`` (small) and
callers upsample it only where a full-resolution map is needed (L_e, display).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-7
FLAT = 1e-5


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

    ``(cam - lo) / (hi - lo + eps |hi|)`` with ``lo, hi`` the min and max of the
    upsampled map (``eps`` relative: scale-invariant). Flat maps
    (range <= FLAT x max, see the module docstring) become zeros, with zero gradient.
    """
    up = upsample(cam, size)
    lo = up.amin(dim=(-2, -1), keepdim=True)
    hi = up.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    flat = span <= FLAT * hi.abs()
    denom = torch.where(flat, torch.ones_like(span), span + eps * hi.abs())  # no 0/0 in the unused branch
    return torch.where(flat, torch.zeros_like(cam), (cam - lo) / denom)


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
