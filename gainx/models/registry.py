"""Build classifiers by name, with random weights or from a local weights file.

No weights are ever downloaded: ``weights`` is a path to a local file holding a
state dict (e.g. torchvision's ImageNet file copied by hand); a classifier head
whose shape differs from ``num_classes`` is re-initialized.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from gainx.models.small_cnn import SmallCNN

# arch -> (builder(num_classes), default target layer)
ARCHS: dict[str, tuple[Callable[[int], nn.Module], str]] = {}


def _tv(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)

    return build


ARCHS["small_cnn"] = (SmallCNN, "features")
ARCHS["resnet18"] = (_tv("resnet18"), "layer4")
ARCHS["resnet50"] = (_tv("resnet50"), "layer4")
ARCHS["vgg16_bn"] = (_tv("vgg16_bn"), "features.42")
ARCHS["vgg11_bn"] = (_tv("vgg11_bn"), "features.27")
ARCHS["mobilenet_v3_large"] = (_tv("mobilenet_v3_large"), "features.16")
ARCHS["mobilenet_v3_small"] = (_tv("mobilenet_v3_small"), "features.12")
ARCHS["efficientnet_b0"] = (_tv("efficientnet_b0"), "features.8")
ARCHS["convnext_tiny"] = (_tv("convnext_tiny"), "features.7")


def default_target_layer(arch: str) -> str:
    """The module path whose output GAIN uses as attention layer for ``arch``."""
    return _lookup(arch)[1]


def _lookup(arch: str) -> tuple[Callable[[int], nn.Module], str]:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[arch]


def build_model(arch: str, num_classes: int, weights: str | Path | None = None) -> nn.Module:
    """Return ``arch`` with ``num_classes`` outputs, random or loaded from ``weights``."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = _lookup(arch)[0](num_classes)
    if weights is not None:
        load_backbone_weights(model, weights)
    return model


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict, skipping entries whose shapes differ (the head)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, ...
        raise ValueError(f"cannot load weights from {path}: {exc}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (names -> tensors), got {type(state).__name__}")
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{path}: not a state dict of tensors; entries {not_tensors[:5]} hold other values")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{path}: no tensor matches the model's parameters (wrong arch?)")
    model.load_state_dict(usable, strict=False)
