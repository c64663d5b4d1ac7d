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

    If the output does not require grad (frozen weights, plain input tensors),
    it is replaced by a leaf that does, so that d score / d features exists.
    """
    captured = Captured()

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        if not isinstance(output, Tensor):
            raise TypeError(f"target layer {type(module).__name__} returns {type(output).__name__}, not a Tensor")
        if output.dim() != 4:
            raise ValueError(f"target layer must output (B, C, h, w) feature maps, got shape {tuple(output.shape)}")
        replaced = None
        if not output.requires_grad:
            output = replaced = output.detach().requires_grad_(True)
        captured.output = output
        return replaced

    handle = layer.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
