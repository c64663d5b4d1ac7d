"""Grad-CAM attention (eq. 1-2) and the attention-mining erase step (eq. 3-4)."""
from gainx.attention.capture import capture_output, resolve_layer
from gainx.attention.erase import EPS, ErasedPairs, attention_erase_eager, upsample
from gainx.attention.gradcam import attention_maps, class_gradients, select_classes

__all__ = [
    "EPS",
    "ErasedPairs",
    "attention_erase_eager",
    "attention_maps",
    "capture_output",
    "class_gradients",
    "resolve_layer",
    "select_classes",
    "upsample",
]
