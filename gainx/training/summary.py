"""What a training run is about to do, printed once at its start.

The lines name the data layout and split sizes, how many training images carry guides (masks or boxes,
needed by GAINext's L_e), the network input size, the target layer and the size of its feature maps, and
the objective with its weights (:func:`objective_line`).
Grad-CAM maps (eq. 1-2) have the feature map's resolution before upsampling, so a map of
:data:`COARSE_GRID` x :data:`COARSE_GRID` cells or fewer can only show coarse blobs: that case gets a warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gainx.attention.capture import resolve_layer
from gainx.attention.layout import apply_transform, feature_layout
from gainx.losses.gain import GAIN

COARSE_GRID = 4


def feature_map_size(model: nn.Module, target_layer: str, image_size: Sequence[int]) -> tuple[int, int]:
    """``(h, w)`` of ``target_layer``'s feature maps for one ``image_size`` ``(H, W)`` input.

    Runs one forward pass on a zero image in eval mode without gradients (batch-norm statistics are
    untouched) and restores the model's mode.
    """
    layer = resolve_layer(model, target_layer)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(
        lambda _m, _i, out: seen.append(out) if isinstance(out, torch.Tensor) else None
    )
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(1, 3, *image_size, device=device))
    finally:
        handle.remove()
        model.train(was_training)
    if not seen:
        raise ValueError(f"target layer {target_layer!r} returned no tensor during a forward pass")
    features = apply_transform(seen[0], feature_layout(seen[0], image_size))
    return int(features.shape[2]), int(features.shape[3])


def start_summary(
    *,
    layout: str,
    data: str,
    splits: dict[str, int],
    num_guided: int,
    image_size: Sequence[int],
    size_source: str,
    target_layer: str,
    layer_source: str,
    grid: tuple[int, int],
) -> list[str]:
    """The start lines: ``splits`` maps each split used (training first) to its number of images;
    ``size_source`` and ``layer_source`` say where the input size and the target layer came from."""
    (train_split, train_size), *others = splits.items()
    parts = [f"{train_split!r} {train_size} images ({num_guided} with guides)"]
    parts += [f"validation on {name}: {size} images" for name, size in others]
    h, w = image_size
    lines = [
        f"data: {layout} layout at {data}; " + ", ".join(parts),
        f"input size: {h}x{w} ({size_source})",
        f"target layer: {target_layer} ({layer_source}); feature maps {grid[0]}x{grid[1]}",
    ]
    if min(grid) <= COARSE_GRID:
        lines.append(
            f"warning: the attention maps have only {grid[0]}x{grid[1]} cells at {h}x{w} input, so they show "
            "coarse blobs; give a larger --image-size or an earlier --target-layer"
        )
    return lines


def objective_line(objective: GAIN, am_warmup: int, batch_size: int) -> str:
    """The objective a run trains, with the weights ``objective`` resolved (``alpha=None`` by method): eq. 6
    for GAIN, eq. 8 with its guidance loss (and the counterfactual images) for GAINext."""
    if objective.method == "baseline":
        return "objective: baseline, L_cl only"
    mining = f"{objective.alpha:g} L_am"
    if objective.alpha and objective.am_gradient == "attention":
        mining += " (through the attention only)"
    if objective.alpha and objective.am_fill == "context":
        mining += " (erased regions filled from their context)"
    if objective.method == "gain":
        terms = f"GAIN (eq. 6): L_cl + {mining}"
    else:
        images = (
            f", {objective.counterfactual_count(batch_size)} counterfactual images per batch of {batch_size}, "
            f"weight {_counterfactual_weight(objective)}, jitter {objective.bank.jitter}"
            if objective.bank is not None
            else ""
        )
        terms = f"GAINext (eq. 8): L_cl + {mining} + {objective.omega_e:g} L_e (guidance {objective.guidance}{images})"
    start = f"; the attention terms from epoch {am_warmup + 1}" if am_warmup else ""
    return f"objective: {terms}{start}"


def _counterfactual_weight(objective: GAIN) -> str:
    """The weight of a counterfactual image in L_cl: fixed, or where its group DRO starts."""
    start, eta = f"{objective.counterfactual_weight:g}", objective.counterfactual_eta
    most = objective.counterfactual_weight_max
    if eta == 0:
        return start
    bound = "" if most is None or math.isinf(most) else f", at most {most:g}"
    return f"{start} moved by group DRO (eta {eta:g}{bound})"
