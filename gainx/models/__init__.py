"""Classifier architectures and reading trained checkpoints."""

from gainx.models.checkpoint import MODEL_KEYS, load_checkpoint, load_model
from gainx.models.registry import ARCHS, build_model, default_target_layer, load_backbone_weights, load_weights
from gainx.models.small_cnn import SmallCNN
from gainx.models.trust import is_stock_spec

__all__ = [
    "ARCHS",
    "MODEL_KEYS",
    "SmallCNN",
    "build_model",
    "default_target_layer",
    "is_stock_spec",
    "load_backbone_weights",
    "load_checkpoint",
    "load_model",
    "load_weights",
]
