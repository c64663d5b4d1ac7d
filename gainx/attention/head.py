"""Detect a global-average-pooling + linear head after the target layer.

When the model computes ``logits = fc(GAP(F))`` from the target-layer output
``F`` (``(B, C, h, w)``), the gradient of the class-``c`` score is
``dS_c / dF_k(i, j) = fc.weight[c, k] / (h w)`` at every position, so the
Grad-CAM weights (paper eq. 1) are ``fc.weight[c] / (h w)`` and the maps of
any set of classes need no backward pass
(:func:`gainx.ops.class_attention.class_attention`).

The head is read off a :mod:`torch.fx` trace in which the target layer is a
leaf. Accepted between ``F`` and the model output, each node used only by the
next one: a global average pool (``nn.AdaptiveAvgPool2d(1)``,
``F.adaptive_avg_pool2d(x, 1)``, ``x.mean((2, 3))``), an optional flatten from
dim 1, ``nn.Dropout`` / ``nn.Identity`` modules (identity in eval mode; a
dropout in training mode with ``p > 0`` is refused), then one ``nn.Linear``
whose output is the model output. Anything else (MLP heads, activations after
the pool, extra uses of ``F``, untraceable models) gives ``None``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["LayerLeafTracer", "find_linear_head"]


def find_linear_head(model: nn.Module, target_layer: str | nn.Module) -> nn.Linear | None:
    """The ``nn.Linear`` of a GAP + linear head right after ``target_layer``, else ``None``.

    ``target_layer`` is a module path (``"layer4"``) or the submodule itself.
    The result depends on the train/eval mode (dropout); one call traces the
    model (tens of ms), so callers that map many batches should cache it.
    """
    if isinstance(target_layer, nn.Module):
        names = [name for name, m in model.named_modules() if m is target_layer]
        if len(names) != 1:
            return None
        target_layer = names[0]
    try:
        if model.get_submodule(target_layer) is model:
            return None
    except AttributeError:
        return None
    try:
        graph = LayerLeafTracer(target_layer).trace(model)
    except Exception:  # noqa: BLE001 - untraceable models have no detectable head
        return None
    modules = dict(model.named_modules())
    nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == target_layer]
    if len(nodes) != 1:
        return None
    node = _only_user(nodes[0])
    if node is None or not _is_gap(node, modules):
        return None
    node = _only_user(node)
    if node is not None and _is_flatten(node, modules):
        node = _only_user(node)
    while node is not None and node.op == "call_module" and isinstance(modules[node.target], (nn.Dropout, nn.Identity)):
        layer = modules[node.target]
        if isinstance(layer, nn.Dropout) and layer.training and layer.p > 0:
            return None
        node = _only_user(node)
    if node is None or node.op != "call_module" or not isinstance(modules[node.target], nn.Linear):
        return None
    linear = modules[node.target]
    users = list(node.users)
    if len(users) != 1 or users[0].op != "output" or users[0].args[0] is not node:
        return None
    return linear


class LayerLeafTracer(fx.Tracer):
    """Default :mod:`torch.fx` tracing, except that the module at ``target_layer``
    is traced as one call (so its output F is a node of the graph), and so is
    every module that runs before it and does not contain it; with
    ``trace_after=False`` also every module after it that does not contain it.

    Only the modules that contain the target layer must be traced op by op
    (to cut the graph at F); the others can be called as they are, so Python
    control flow inside them (the shape checks of Hugging Face embeddings,
    ``if pixel_values.shape[1] != num_channels``) never meets a proxy. The
    modules after the target are traced by default because
    :func:`find_linear_head` reads the pooling and linear layers inside them.
    """

    def __init__(self, target_layer: str, trace_after: bool = True) -> None:  # one tracer per trace
        super().__init__()
        self.target_layer = target_layer
        self.trace_after = trace_after
        self.target_called = False

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name == self.target_layer:
            self.target_called = True
            return True
        contains_target = module_qualified_name == "" or self.target_layer.startswith(module_qualified_name + ".")
        off_path_leaf = not contains_target and not (self.target_called and self.trace_after)
        return off_path_leaf or super().is_leaf_module(m, module_qualified_name)


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_gap(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))
    if node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1))
    if (node.op == "call_method" and node.target == "mean") or (
        node.op == "call_function" and node.target is torch.mean
    ):
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return isinstance(dims, (tuple, list)) and sorted(d % 4 for d in dims) == [2, 3]
    return False


def _is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules[node.target]
        return isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1
    if (node.op == "call_function" and node.target is torch.flatten) or (
        node.op == "call_method" and node.target == "flatten"
    ):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    return False
