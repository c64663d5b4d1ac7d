"""Reading gainx checkpoints safely (``torch.load(weights_only=True)``) and rebuilding their model.

A checkpoint is a plain dict of tensors and builtins:

``model`` (state dict), ``arch`` (a built-in name, ``timm:<name>`` or
``package.module:factory``), ``model_kwargs`` (the factory's JSON keyword
arguments; absent in older checkpoints: none), ``num_classes``, ``classes`` (names),
``target_layer``, ``image_size``, ``mean``, ``std``, ``multilabel``,
``config`` (the training config as builtins), and for resuming ``epoch``,
``optimizer``, ``scheduler``, ``rng`` (torch / numpy / python RNG states as
tensors and lists). Training writes them (:mod:`gainx.training.checkpoint`);
inference, export and evaluation only read them, through this module.

Rebuilding the model of a checkpoint whose ``arch`` is not stock (a built-in
name, ``timm:<name>`` or a ``torchvision.models`` builder) would run the code
it names; :func:`load_model` refuses it unless the caller allows it
(:mod:`gainx.models.trust`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from gainx.models.factory import check_model_kwargs
from gainx.models.fit import check_fits_before_building, does_not_fit
from gainx.models.registry import build_model, check_state_dict
from gainx.models.trust import check_checkpoint_model

MODEL_KEYS = ("arch", "num_classes", "classes", "target_layer", "image_size", "mean", "std", "multilabel")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a gainx checkpoint safely; errors name the file and the problem (a missing entry, a ``model``
    entry that is not a dict, a ``num_classes`` that is not a positive int or not the number of ``classes``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a gainx checkpoint (no 'model' entry)")
    missing = [k for k in MODEL_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} is not a gainx checkpoint: missing {missing}")
    check_state_dict(state["model"], f"{path}, entry 'model'")
    num_classes, classes = state["num_classes"], state["classes"]
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"{path}: 'num_classes' must be a positive int, got {num_classes!r}")
    if not isinstance(classes, (list, tuple)) or len(classes) != num_classes:
        got = f"{len(classes)} names" if isinstance(classes, (list, tuple)) else f"a {type(classes).__name__}"
        raise ValueError(f"{path}: 'classes' must be a list of {num_classes} names ('num_classes'), got {got}")
    return state


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict holding NaN or infinite values."""
    return [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]


def check_finite_weights(path: str | Path, weights: dict[str, Any], consequence: str) -> None:
    """Raise ``ValueError`` naming ``path``, the count and the first of the ``weights`` holding NaN or infinity."""
    bad = non_finite_tensors(weights)
    if bad:
        raise ValueError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (first: {bad[0]}); {consequence}"
        )


def load_model(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    model: str | nn.Module | None = None,
    trust_model_code: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained classifier (in eval mode) and return it with its metadata.

    Weights holding NaN or infinity (a diverged run) are refused: every score
    such a model gives is meaningless. A checkpoint whose model spec is not
    stock (:mod:`gainx.models.trust`) is refused before anything is imported
    unless ``model`` is that same spec (the caller vouches for it) or
    ``trust_model_code`` is true. A model that would not fit the file's weights
    is refused before it takes memory (:mod:`gainx.models.fit`). ``model`` may
    also be a built ``nn.Module``: the weights are loaded into it and nothing is
    rebuilt.
    """
    state = load_checkpoint(path, map_location)
    check_finite_weights(path, state["model"], "the run that wrote it diverged")
    arch = state["arch"]
    if not isinstance(arch, str):
        raise ValueError(f"{path}: 'arch' must be a model spec (a string), got {type(arch).__name__}")
    try:
        model_kwargs = check_model_kwargs(state.get("model_kwargs"))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if isinstance(model, nn.Module):
        net = model
    else:
        check_checkpoint_model(path, arch, model_kwargs, model, trust_model_code)
        check_fits_before_building(path, arch, state["num_classes"], model_kwargs, state["model"])
        net = build_model(arch, state["num_classes"], model_kwargs=model_kwargs)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{does_not_fit(path, arch, model_kwargs)}: {exc}") from exc
    net.eval()
    meta = {k: state[k] for k in MODEL_KEYS}
    meta["model_kwargs"] = model_kwargs
    meta["config"] = state.get("config", {})
    return net, meta
