"""Grad-CAM attention (eq. 1-2) of any classifier: layer capture, head detection, batched maps."""

from gainx.attention.capture import capture_output, resolve_layer
from gainx.attention.head import find_linear_head
from gainx.attention.maps import attention_maps, class_evidence, class_gradients, select_classes

__all__ = [
    "attention_maps",
    "capture_output",
    "class_evidence",
    "class_gradients",
    "find_linear_head",
    "resolve_layer",
    "select_classes",
]
