"""The ground floor: Grad-CAM map math and its kernels, behind one seam each.

* :mod:`gainx.ops.cam`: the eager Grad-CAM map math (eq. 1-2, min-max
  normalization, bilinear upsampling), the reference of every kernel.
* :mod:`gainx.ops.attention_erase`: the attention-mining step (eq. 1-4), its
  eager reference and the ``backend=`` dispatch; fused Triton kernels in
  :mod:`gainx.ops.attention_erase_triton` and :mod:`gainx.ops.attention_erase_fused`
  (each imported only when its backend runs).
* :mod:`gainx.ops.context_fill`: what an erased region holds: zero (eq. 3) or the image's own
  surroundings (``erase``, ``context_fill``).
* :mod:`gainx.ops.class_attention`: batched maps of many classes (``class_attention``,
  ``gradcam``) through the C++/CUDA extension ``gainx._C`` (:mod:`gainx.ops.extension`),
  with eager fallbacks.

Nothing here imports the rest of gainx.
"""

from gainx.ops.attention_erase import (
    ErasedPairs,
    attention_erase,
    attention_erase_eager,
    available_backends,
    register_backend,
    soft_mask,
)
from gainx.ops.cam import EPS, FLAT, gradcam_raw, normalize_cam, upsample, weighted_maps
from gainx.ops.class_attention import class_attention, gradcam
from gainx.ops.context_fill import ERASE_FILLS, context_fill, erase

__all__ = [
    "EPS",
    "ERASE_FILLS",
    "FLAT",
    "ErasedPairs",
    "attention_erase",
    "attention_erase_eager",
    "available_backends",
    "class_attention",
    "context_fill",
    "erase",
    "gradcam",
    "gradcam_raw",
    "normalize_cam",
    "register_backend",
    "soft_mask",
    "upsample",
    "weighted_maps",
]
