"""Checkpoints: atomic writes, safe loads (``weights_only=True``).

A checkpoint is a plain dict of tensors and builtins:

``model`` (state dict), ``arch``, ``num_classes``, ``classes`` (names),
``target_layer``, ``image_size``, ``mean``, ``std``, ``multilabel``,
``config`` (the training config as builtins), and for resuming ``epoch``,
``optimizer``, ``scheduler``, ``rng`` (torch / numpy / python RNG states as
tensors and lists).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gainx.io import atomic_open
from gainx.models import build_model

MODEL_KEYS = ("arch", "num_classes", "classes", "target_layer", "image_size", "mean", "std", "multilabel")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename); a full disk is named as such."""
    missing = [k for k in ("model", *MODEL_KEYS) if k not in state]
    if missing:
        raise ValueError(f"checkpoint for {path} lacks {missing}")
    buffer = io.BytesIO()  # serialized first: torch.save's own writer reports a full disk without errno or file
    torch.save(state, buffer)
    with atomic_open(path, "wb") as fh:
        fh.write(buffer.getbuffer())


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
    return [name for name, value in state.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained classifier (in eval mode) and return it with its metadata.

    Weights holding NaN or infinity (a diverged run) are refused: every score
    such a model gives is meaningless.
    """
    state = load_checkpoint(path, map_location)
    bad = non_finite_tensors(state["model"])
    if bad:
        raise ValueError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (first: {bad[0]}); "
                         f"the run that wrote it diverged")
    model = build_model(state["arch"], state["num_classes"])
    model.load_state_dict(state["model"])
    model.eval()
    meta = {k: state[k] for k in MODEL_KEYS}
    meta["config"] = state.get("config", {})
    return model, meta
