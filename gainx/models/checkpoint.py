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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from gainx.models.registry import build_model

MODEL_KEYS = ("arch", "num_classes", "classes", "target_layer", "image_size", "mean", "std", "multilabel")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a gainx checkpoint safely; errors name the file and the problem."""
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
    return state


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict holding NaN or infinite values."""
    return [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    ]


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained classifier (in eval mode) and return it with its metadata.

    Weights holding NaN or infinity (a diverged run) are refused: every score
    such a model gives is meaningless.
    """
    state = load_checkpoint(path, map_location)
    bad = non_finite_tensors(state["model"])
    if bad:
        raise ValueError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (first: {bad[0]}); "
            f"the run that wrote it diverged"
        )
    model_kwargs = state.get("model_kwargs") or {}
    model = build_model(state["arch"], state["num_classes"], model_kwargs=model_kwargs)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path}: the weights do not fit {state['arch']!r} {model_kwargs or ''}: {exc}") from exc
    model.eval()
    meta = {k: state[k] for k in MODEL_KEYS}
    meta["model_kwargs"] = model_kwargs
    meta["config"] = state.get("config", {})
    return model, meta
