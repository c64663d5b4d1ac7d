"""Classifier architectures."""
from gainx.models.registry import ARCHS, build_model, default_target_layer, load_backbone_weights
from gainx.models.small_cnn import SmallCNN

__all__ = ["ARCHS", "SmallCNN", "build_model", "default_target_layer", "load_backbone_weights"]
