"""A default Grad-CAM target layer for any CNN: the last feature map that feeds the pooling head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# Modules whose 4-D output is not a feature map of the network's own (pooling heads, pass-throughs).
_SKIPPED = (
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.Flatten,
)


def find_target_layer(model: nn.Module, image_size: Sequence[int] = (224, 224)) -> str:
    """The module path of the last 4-D output with a spatial extent (``min(shape[1:]) > 1``).

    One forward pass on a random ``(1, 3, H, W)`` image (eval mode, no grad;
    the model's mode is restored) records every submodule's output in the
    order the modules finish. Adaptive pools, dropout, identity and flatten
    modules are skipped; of the modules returning that same tensor, the last
    to finish is chosen, i.e. the outermost container (``layer4`` rather
    than ``layer4.1.relu``). Global pooling outputs (``h = w = 1``) are not
    feature maps.
    """
    finished: list[tuple[str, Tensor]] = []
    handles = []
    for name, module in model.named_modules():
        if name and not isinstance(module, _SKIPPED):
            handles.append(module.register_forward_hook(_recorder(name, finished)))
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.rand(1, 3, *image_size))
    except Exception as exc:
        raise ValueError(
            f"cannot find a target layer: {type(model).__name__} failed on a (1, 3, {image_size[0]}, "
            f"{image_size[1]}) image ({exc}); give the target layer explicitly"
        ) from exc
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    maps = [(name, out) for name, out in finished if out.dim() == 4 and min(out.shape[1:]) > 1]
    if not maps:
        raise ValueError(
            f"{type(model).__name__} has no submodule returning a (N, C, h, w) feature map; give the target layer"
        )
    last = maps[-1][1]
    return [name for name, out in maps if out is last][-1]


def _recorder(name: str, finished: list[tuple[str, Tensor]]):
    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, Tensor):
            finished.append((name, output))

    return hook
