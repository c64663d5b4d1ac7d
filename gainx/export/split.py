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

Reading the model input's *shape* after the target layer is not a data
dependency (EfficientNet-PyTorch's ``bs = inputs.size(0)`` ... ``x.view(bs, -1)``):
the input's batch size is F's, ``features.size(0)``, a symbolic size in the
head (which then also serves the K-fold repeated F of
:func:`gainx.export.graph.head_vjp_attention`). Its other sizes (channels,
H, W) are constants of the export size, which needs the example images; the
head is then valid at that size only and says so in
``head.meta["fixed_input_size"]`` (:func:`input_size_is_fixed`).
"""

from __future__ import annotations

import inspect
import operator
import warnings
from typing import Any, NamedTuple

import torch
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


def _input_shape_read(node: fx.Node) -> tuple[fx.Node, int | None] | None:
    """``(input, dim)`` when ``node`` reads the shape of a model input alone: ``x.size(d)`` (dim ``d``),
    ``x.size()`` or ``x.shape`` (dim None: the whole shape); else None."""
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node) or source.op != "placeholder" or node.all_input_nodes != [source]:
        return None
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return (source, dim) if dim is None or isinstance(dim, int) else None
    if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
        return source, None
    return None


def input_shape(features: Tensor, rest: tuple[int, ...]) -> torch.Size:
    """The model input's shape as the head sees it: F's batch size, then the export size's ``rest``."""
    return torch.Size((features.shape[0], *rest))


def _shape_in_head(
    head: fx.Graph, features: fx.Node, node: fx.Node, dim: int | None, example: Tensor | None, used: set[fx.Node]
) -> tuple[fx.node.Argument, list[int] | None] | None:
    """The head's value for ``node``, a read of dim ``dim`` (None: the whole shape) of the ``(N, 3, H, W)`` model
    input, and the input size ``[H, W]`` it fixes (None: none); None when it needs the export size and
    ``example`` is None."""
    if dim in (0, -4):
        return head.call_method("size", (features, 0)), None
    if example is None:
        return None
    size = [int(v) for v in example.shape[2:]]
    if dim is not None:
        return int(example.shape[dim]), size
    value = head.call_function(input_shape, (features, tuple(int(v) for v in example.shape[1:])))
    batch_only = all(
        u.op == "call_function" and u.target is operator.getitem and u.args[1] in (0, -4)
        for u in node.users
        if u in used
    )
    return value, None if batch_only else size


def input_size_is_fixed(head: fx.GraphModule) -> bool:
    """Whether ``head`` holds sizes of the export's input other than its batch (valid at that size only)."""
    return head.meta.get("fixed_input_size") is not None


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
    features = head.placeholder("features")
    head_env: dict[fx.Node, fx.node.Argument] = {target: features}
    fixed_input_size = None

    def head_arg(node: fx.Node) -> fx.node.Argument:
        if node not in head_env:  # a constant the body uses too (get_attr): copy it
            head_env[node] = head.node_copy(node, head_arg)
        return head_env[node]

    for node in graph.nodes:
        if node not in head_nodes:
            continue
        earlier = [n for n in node.all_input_nodes if n not in head_env and n.op != "get_attr"]
        read = _input_shape_read(node) if earlier else None
        value = None if read is None else _shape_in_head(head, features, node, read[1], example, head_nodes)
        if value is not None:
            head_env[node], fixed = value
            fixed_input_size = fixed_input_size or fixed
            continue
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
    head_module = fx.GraphModule(tracer.root, head)
    head_module.meta["fixed_input_size"] = fixed_input_size
    return SplitModel(fx.GraphModule(tracer.root, body), head_module)
