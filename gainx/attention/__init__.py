"""Grad-CAM attention (eq. 1-2) of any classifier: layer capture, head detection, batched maps."""

from gainx.attention.capture import capture_output, resolve_layer
from gainx.attention.head import find_linear_head
from gainx.attention.layout import ReshapeTransform, apply_transform, feature_layout
from gainx.attention.maps import attention_maps, class_evidence, class_gradients, layer_transform, select_classes
from gainx.attention.outputs import OutputSelector, select_scores

__all__ = [
    "OutputSelector",
    "ReshapeTransform",
    "apply_transform",
    "attention_maps",
    "capture_output",
    "class_evidence",
    "class_gradients",
    "feature_layout",
    "find_linear_head",
    "layer_transform",
    "resolve_layer",
    "select_classes",
    "select_scores",
]
