"""Whether a checkpoint's weights fit its model, checked before the model takes any memory.

A checkpoint's ``num_classes`` and model keyword arguments come from the file and size the tensors of
the model they rebuild (``torchvision.models:vit_b_16`` with ``{"image_size": 100000}`` would allocate
120 GB before its weights are compared). So :func:`check_fits_before_building` builds the model on the
``meta`` device first (tensors with a shape and no storage) and refuses it unless

* every tensor of its state dict that the file also holds has the file's shape, and
* its state dict holds at most as many elements as the file's weights, plus one for each tensor the
  file lacks (the ``num_batches_tracked`` counters that loading adds to older batch norms),

so that building it for real allocates no more than the file's weights already took.

Not covered: buffers outside the state dict (non-persistent buffers), the Python objects (layers) whose
number the keyword arguments may set, and factories that cannot build on the meta device because they
read tensor values while building (torchvision's RegNet builders): those are built without this check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gainx.models.registry import build_model


def does_not_fit(path: str | Path, arch: str, model_kwargs: dict[str, Any]) -> str:
    """The start of the error for weights that do not fit the model ``arch`` built with ``model_kwargs``."""
    return f"{path}: the weights do not fit {arch!r} {model_kwargs or ''}"


def check_fits_before_building(
    path: str | Path, arch: str, num_classes: int, model_kwargs: dict[str, Any], weights: dict[str, Any]
) -> None:
    """Raise ``ValueError`` (naming ``path``, the first tensor or the sizes) unless the model ``arch``, built
    on the meta device, fits the file's ``weights`` as the module docstring says."""
    try:
        with torch.device("meta"):
            model = build_model(arch, num_classes, model_kwargs=model_kwargs)
    except ValueError:
        raise
    except Exception:  # reads tensor values while building: built for real without this check
        return
    shapes = {k: v.shape for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    given = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    for name, shape in shapes.items():
        if name in given and given[name].shape != shape:
            raise ValueError(
                f"{does_not_fit(path, arch, model_kwargs)}: {name} has shape {list(given[name].shape)} in the file "
                f"and {list(shape)} in the model"
            )
    size = sum(shape.numel() for shape in shapes.values())
    in_file = sum(v.numel() for v in given.values())
    if size > in_file + sum(name not in given for name in shapes):
        raise ValueError(
            f"{does_not_fit(path, arch, model_kwargs)}: with {num_classes} classes the model would hold {size:,} "
            f"weights, the file holds {in_file:,}; refused before building it"
        )
