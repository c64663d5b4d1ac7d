"""Split a classifier at its target layer into ``body(x) -> F`` and ``head(F) -> scores``.

A forward hook can read F but cannot cut the graph; an ONNX graph that returns
attention needs the head as a separate function of F (its vector-Jacobian
product gives d s_c / d F, paper eq. 1). The model is traced with
``torch.fx`` keeping the target module as one leaf call, and every module
that does not contain it as one call too (only the path to the target layer
is traced op by op); the body is the target's call and its ancestors, the
head is every other node the output depends on, fed by F alone. Nodes the
output does not depend on (shape checks such as timm's
``_assert(x.ndim == 4)`` on body tensors) are dropped. A model whose code on
that path tests shapes or dtypes is traced for the export size (:func:`_trace`).
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, NamedTuple

import torch.fx as fx
from torch import Tensor, nn
from torch.fx.experimental.meta_tracer import MetaTracer

from gainx.attention.capture import resolve_layer
from gainx.attention.head import LayerLeafTracer
from gainx.export.errors import first_line


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


def _describe(node: fx.Node) -> str:
    """A node in the user's terms: a module path, the model input, or the operation and the module it follows."""
    if node.op == "call_module":
        return f"the output of module {node.target!r}"
    if node.op == "placeholder":
        return f"the model input {node.target!r}"
    if node.op == "call_function" and node.target is getattr:
        return f"`.{node.args[1]}`"
    name = f"`{getattr(node.target, '__name__', node.target)}`"
    stack, seen = list(node.all_input_nodes), set()
    while stack:  # the nearest module or input it is computed from
        source = stack.pop(0)
        if source.op in ("call_module", "placeholder"):
            return f"{name} on {_describe(source)}"
        if source not in seen:
            seen.add(source)
            stack.extend(source.all_input_nodes)
    return name


def _reader(node: fx.Node) -> str:
    return f"module {node.target!r}" if node.op == "call_module" else _describe(node)


def _defaults(model: nn.Module) -> dict[str, Any]:
    """``forward``'s optional arguments at their defaults: traced as constants, not as inputs.

    Traced as inputs they are proxies, and a test such as timm ViT's
    ``if attn_mask is not None`` takes the branch meant for a given mask.
    """
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


class _MetaLayerLeafTracer(LayerLeafTracer, MetaTracer):
    """:class:`LayerLeafTracer` whose proxies carry meta tensors of the example's shapes and dtypes."""


def _trace(model: nn.Module, target_layer: str, example: Tensor | None) -> tuple[fx.Tracer, fx.Graph]:
    """Trace symbolically; if that fails and ``example`` is given, trace again with its shapes known.

    Symbolic proxies keep sizes as graph values (a dynamic H, W export) but
    cannot decide Python tests on shapes or dtypes, such as Hugging Face's
    ``if pixel_values.dtype != expected_dtype``; with meta tensors attached
    (:class:`torch.fx.experimental.meta_tracer.MetaTracer`) those tests are
    decided for the example's size, which the graph is then fixed to.
    """
    concrete = _defaults(model) or None
    try:
        tracer = LayerLeafTracer(target_layer, trace_after=False)
        return tracer, tracer.trace(model, concrete_args=concrete)
    except Exception as exc:
        if example is None:
            raise _untraceable(model, target_layer, exc) from exc
        symbolic_error = exc
    first = next(iter(inspect.signature(model.forward).parameters))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "could not compute metadata" for ops whose shapes are never read
            tracer = _MetaLayerLeafTracer(target_layer, trace_after=False)
            return tracer, tracer.trace(model, {first: example.to("meta")}, concrete)
    except Exception:
        raise _untraceable(model, target_layer, symbolic_error) from symbolic_error


def _untraceable(model: nn.Module, target_layer: str, exc: Exception) -> ValueError:
    return ValueError(
        f"cannot trace {type(model).__name__} with torch.fx to split it at {target_layer!r} ({first_line(exc)}); "
        f"Python control flow on tensor values (if / for over a tensor) does not trace: write it with "
        f"torch.where, or move it into a module before the target layer"
    )


def split_at_layer(model: nn.Module, target_layer: str, example: Tensor | None = None) -> SplitModel:
    """Return ``(body, head)`` with ``head(body(x)) == model(x)``.

    ``example`` (images of the export size) lets a model whose Python code
    tests shapes or dtypes be traced for that size (:func:`_trace`). Raises
    ``ValueError`` when the model cannot be traced by ``torch.fx``, when the
    target layer runs more than once, or when the head needs a tensor of the
    body other than F (e.g. a skip connection around the target layer).
    """
    resolve_layer(model, target_layer)  # clear error for a wrong path
    name = type(model).__name__
    tracer, graph = _trace(model, target_layer, example)
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == target_layer]
    if len(calls) != 1:
        raise ValueError(
            f"{name}: target layer {target_layer!r} is called {len(calls)} times in forward, expected once"
        )
    target = calls[0]
    body_nodes = _ancestors(target)
    output = next(n for n in graph.nodes if n.op == "output")
    head_nodes = _ancestors(output) - body_nodes

    body = fx.Graph()
    body_env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node in body_nodes:
            body_env[node] = body.node_copy(node, body_env.__getitem__)
    body.output(body_env[target])

    head = fx.Graph()
    head_env: dict[fx.Node, fx.Node] = {target: head.placeholder("features")}

    def head_arg(node: fx.Node) -> fx.Node:
        if node not in head_env:  # a constant the body uses too (get_attr): copy it
            head_env[node] = head.node_copy(node, head_arg)
        return head_env[node]

    for node in graph.nodes:
        if node not in head_nodes:
            continue
        earlier = [n for n in node.all_input_nodes if n not in head_env and n.op != "get_attr"]
        if earlier:
            raise ValueError(
                f"{name}: the layers after {target_layer!r} read {_describe(earlier[0])} (in "
                f"{_reader(node)}), computed before it, not only the target layer's output (a skip connection "
                f"around it); choose a later target layer through which all the information reaching the scores flows"
            )
        if node.op == "output":
            head.output(fx.map_arg(node.args[0], head_arg))
        else:
            head_env[node] = head.node_copy(node, head_arg)
    return SplitModel(fx.GraphModule(tracer.root, body), fx.GraphModule(tracer.root, head))
