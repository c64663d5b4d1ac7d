"""Find a layer by module path and capture its output during one forward pass."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn


def resolve_layer(model: nn.Module, target_layer: str | nn.Module) -> nn.Module:
    """Return the submodule named by ``target_layer`` (e.g. ``"layer4"``, ``"features.28"``)."""
    if isinstance(target_layer, nn.Module):
        return target_layer
    try:
        return model.get_submodule(target_layer)
    except AttributeError:
        names = [n for n, m in model.named_modules() if n and len(list(m.children())) > 0][-8:]
        raise ValueError(
            f"target layer {target_layer!r} not found in {type(model).__name__}; module paths look like {names}"
        ) from None


class Captured:
    """Holds the target layer's output of the last forward pass."""

    def __init__(self) -> None:
        self.output: Tensor | None = None

    @property
    def features(self) -> Tensor:
        if self.output is None:
            raise RuntimeError("the target layer did not run during the forward pass")
        return self.output


@contextmanager
def capture_output(layer: nn.Module) -> Iterator[Captured]:
    """Record ``layer``'s output while the context is open; the hook is always removed.

    The rest of the network runs on a copy of the output, so an in-place op
    right after the layer (``F.relu(x, inplace=True)`` in DenseNet) does not
    change the recorded tensor: the maps explain the layer's own output, and
    its gradient flows back through the copy. If the output does not require
    grad (frozen weights, plain input tensors), it is replaced by a leaf that
    does, so that d score / d features exists.
    """
    captured = Captured()

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"target layer {type(module).__name__} returns {type(output).__name__}, not a Tensor; "
                "pick a submodule that returns the feature tensor"
            )
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        captured.output = output
        return output.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
