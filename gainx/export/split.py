"""Split a classifier at its target layer into ``body(x) -> F`` and ``head(F) -> scores``.

A forward hook can read F but cannot cut the graph; an ONNX graph that returns
attention needs the head as a separate function of F (its vector-Jacobian
product gives d s_c / d F, paper eq. 1). The model is traced with
``torch.fx`` keeping the target module as one leaf call; the body is that call
and its ancestors, the head is every other node, fed by F alone.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.fx as fx
from torch import nn

from gainx.attention.capture import resolve_layer
from gainx.attention.head import LayerLeafTracer


class SplitModel(NamedTuple):
    body: fx.GraphModule  # images (normalized) -> F (N, C_f, h, w)
    head: fx.GraphModule  # F -> scores (N, C)


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def split_at_layer(model: nn.Module, target_layer: str) -> SplitModel:
    """Return ``(body, head)`` with ``head(body(x)) == model(x)``.

    Raises ``ValueError`` when the model cannot be traced by ``torch.fx``, when
    the target layer runs more than once, or when the head needs a tensor of
    the body other than F (e.g. a skip connection around the target layer).
    """
    resolve_layer(model, target_layer)  # clear error for a wrong path
    tracer = LayerLeafTracer(target_layer)
    name = type(model).__name__
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        raise ValueError(f"cannot trace {name} with torch.fx to split it at {target_layer!r}: {exc}") from exc
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == target_layer]
    if len(calls) != 1:
        raise ValueError(
            f"{name}: target layer {target_layer!r} is called {len(calls)} times in forward, expected once"
        )
    target = calls[0]
    body_nodes = _ancestors(target)

    body = fx.Graph()
    body_env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node in body_nodes:
            body_env[node] = body.node_copy(node, body_env.__getitem__)
    body.output(body_env[target])

    head = fx.Graph()
    head_env: dict[fx.Node, fx.Node] = {target: head.placeholder("features")}

    def head_arg(node: fx.Node) -> fx.Node:
        if node in head_env:
            return head_env[node]
        if node.op == "get_attr":  # a constant the body uses too: copy it
            head_env[node] = head.node_copy(node, head_arg)
            return head_env[node]
        raise ValueError(
            f"{name}: the layers after {target_layer!r} use {node.name!r} from before it, not only the "
            f"target layer's output; choose a target layer that separates the network"
        )

    for node in graph.nodes:
        if node in body_nodes:
            continue
        if node.op == "output":
            head.output(fx.map_arg(node.args[0], head_arg))
        else:
            head_env[node] = head.node_copy(node, head_arg)
    return SplitModel(fx.GraphModule(tracer.root, body), fx.GraphModule(tracer.root, head))
