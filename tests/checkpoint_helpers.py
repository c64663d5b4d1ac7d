"""Shared helper of the checkpoint tests: the state dictionary of a gainx checkpoint of a small 3-class model."""

from __future__ import annotations

from typing import Any

from torch import nn


def checkpoint_state(model: nn.Module, arch: str, std: float = 0.5, **extra: Any) -> dict:
    """A gainx checkpoint of ``model`` recording ``arch``: classes ``a, b, c``, target layer ``features``,
    16 x 16 images, mean 0.5 and ``std`` per channel, single-label; ``extra`` entries are added (or win)."""
    return {
        "model": model.state_dict(),
        "arch": arch,
        "num_classes": 3,
        "classes": ["a", "b", "c"],
        "target_layer": "features",
        "image_size": [16, 16],
        "mean": [0.5] * 3,
        "std": [std] * 3,
        "multilabel": False,
        **extra,
    }
