"""Kernels behind one seam: fused Triton attention-mining step
(:mod:`gainx.ops.attention_erase`, used through :mod:`gainx.backends`) and the
C++/CUDA extension ops for batched attention (:mod:`gainx.ops.class_attention`)."""
import gainx.attention  # noqa: F401  first: gainx.attention.gradcam imports class_attention from this package
from gainx.ops.class_attention import class_attention, gradcam

__all__ = ["class_attention", "gradcam"]
