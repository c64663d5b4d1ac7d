"""Classifiers from any import path: ``package.module:factory`` and ``timm:<name>`` model specs.

A spec names a callable returning an ``nn.Module``; checkpoints record the
spec and its JSON-able keyword arguments (never a pickled module), and
loading a checkpoint imports the factory again (only for specs it may
rebuild: :mod:`gainx.models.trust`). ``num_classes`` is passed to
factories that take it (torchvision and timm builders do) unless the keyword
arguments already set it.

Nothing is downloaded unless the keyword arguments ask for it: timm models are
created with ``pretrained=False``, and a torchvision builder gets
``weights=None`` and ``weights_backbone=None`` (the detection and segmentation
builders default to downloading ImageNet backbone weights) for each of the two it
takes that the keyword arguments set neither directly nor by its legacy name
(``pretrained``, ``pretrained_backbone``).

A factory is one name defined in the module the spec names: a subclass of
``nn.Module`` or a Python function whose ``__module__`` is that module (no
attribute chains such as ``os.path:os.system``, no builtins, bound methods or
callable objects). ``torchvision.models[.<submodule>]:<name>`` must name one
of torchvision's registered model builders (``torchvision.models.list_models()``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
from collections.abc import Callable
from typing import Any

from torch import nn

TIMM_PREFIX = "timm:"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE = re.compile(rf"{_NAME}(\.{_NAME})*")
_TORCHVISION_MODULE = re.compile(rf"torchvision\.models(\.{_NAME})*")
# torchvision builder parameters naming weights to download -> their legacy (boolean) names
TORCHVISION_WEIGHTS_ARGS = {"weights": "pretrained", "weights_backbone": "pretrained_backbone"}


def is_factory_spec(spec: str) -> bool:
    """Whether ``spec`` is ``timm:<name>`` or ``package.module:factory`` (not a built-in name)."""
    return spec.startswith(TIMM_PREFIX) or ":" in spec


def check_model_kwargs(model_kwargs: Any) -> dict[str, Any]:
    """``model_kwargs`` as a dict with string keys that survives a JSON round trip (checkpoints store it)."""
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, dict) or not all(isinstance(k, str) for k in model_kwargs):
        raise ValueError(f"model keyword arguments must be a JSON object, got {model_kwargs!r}")
    try:
        if json.loads(json.dumps(model_kwargs)) != model_kwargs:
            raise TypeError("changed by a JSON round trip (tuples?)")
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"model keyword arguments must be JSON values (they are stored in checkpoints): {exc}"
        ) from exc
    return dict(model_kwargs)


def model_kwargs_arg(text: str) -> dict[str, Any]:
    """``--model-kwargs`` of the command line: a JSON object (argparse type; errors name the problem)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"num_classes\": 5}}', got {text!r}")
    return value


def split_spec(spec: str) -> tuple[str, str]:
    """``package.module:factory`` -> ``(module, factory)``; the factory is one name, never an attribute chain."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not _MODULE.fullmatch(module_name) or not re.fullmatch(_NAME, attr):
        raise ValueError(
            f"model {spec!r}: expected 'package.module:factory' (a module path, a colon and one name defined in "
            f"that module)"
        )
    return module_name, attr


def is_torchvision_spec(spec: str) -> bool:
    """Whether ``spec`` names a builder of ``torchvision.models`` or of one of its submodules."""
    return _TORCHVISION_MODULE.fullmatch(spec.partition(":")[0]) is not None


def _import_module(spec: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model {spec!r}: cannot import {module_name!r} ({exc})") from exc


def _torchvision_builder(spec: str, module_name: str, attr: str) -> Callable[..., Any]:
    from torchvision import models

    builder = getattr(_import_module(spec, module_name), attr, None)
    if not any(builder is models.get_model_builder(name) for name in models.list_models()):
        raise ValueError(
            f"model {spec!r}: {module_name} has no model builder {attr!r} (see torchvision.models.list_models())"
        )
    return builder


def _import_factory(spec: str) -> Callable[..., Any]:
    module_name, attr = split_spec(spec)
    if is_torchvision_spec(spec):
        return _torchvision_builder(spec, module_name, attr)
    module = _import_module(spec, module_name)
    if not hasattr(module, attr):
        raise ValueError(f"model {spec!r}: {module_name!r} has no attribute {attr!r}")
    target = getattr(module, attr)
    if inspect.isclass(target):
        if not issubclass(target, nn.Module):
            raise ValueError(f"model {spec!r}: {attr!r} is a class that is not a torch.nn.Module")
    elif not inspect.isfunction(target):
        raise ValueError(
            f"model {spec!r}: {attr!r} is a {type(target).__name__}, not a class or function returning a model"
        )
    if target.__module__ != module_name:
        raise ValueError(
            f"model {spec!r}: {attr!r} is defined in {target.__module__!r}, not in {module_name!r}; a factory is "
            f"named by the module that defines it"
        )
    return target


def _timm_factory(spec: str) -> Callable[..., Any]:
    try:
        import timm
    except ImportError:
        raise ValueError(f"model {spec!r} needs timm: pip install timm (or pip install 'gainx[timm]')") from None
    name = spec[len(TIMM_PREFIX) :]
    if name not in timm.list_models():
        raise ValueError(f"model {spec!r}: timm has no architecture {name!r} (see timm.list_models())")
    return lambda **kwargs: timm.create_model(name, pretrained=False, **kwargs)  # never downloads


def _parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # builtins without a signature
        return {}


def _takes_num_classes(factory: Callable[..., Any]) -> bool:
    params = _parameters(factory).values()
    return any(p.name == "num_classes" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _no_download_kwargs(builder: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``None`` for each of a torchvision builder's ``weights`` / ``weights_backbone`` that ``kwargs`` leave unset."""
    params = _parameters(builder)
    return {
        name: None
        for name, legacy in TORCHVISION_WEIGHTS_ARGS.items()
        if name in params and name not in kwargs and legacy not in kwargs
    }


def build_from_factory(spec: str, num_classes: int, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Call the factory named by ``spec`` with ``model_kwargs`` (+ ``num_classes`` when it takes it, and for a
    torchvision builder ``weights=None`` / ``weights_backbone=None`` unless set: nothing is downloaded)."""
    kwargs = check_model_kwargs(model_kwargs)
    factory = _timm_factory(spec) if spec.startswith(TIMM_PREFIX) else _import_factory(spec)
    if "num_classes" not in kwargs and (spec.startswith(TIMM_PREFIX) or _takes_num_classes(factory)):
        kwargs["num_classes"] = num_classes
    if is_torchvision_spec(spec):
        kwargs.update(_no_download_kwargs(factory, kwargs))
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"model {spec!r} cannot be built with keyword arguments {kwargs}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
