"""The module that is exported to ONNX: scores, classes and attention in one graph.

``AttentionGraph(images, class_ids) -> (scores, classes, attention)``:

* ``x = (images - mean) / std`` (normalization inside the graph);
* ``F = body(x)``, ``scores = head(F)`` (the model split at its target layer);
* ``classes``: ``class_ids`` where ``>= 0``, else the class of that rank in the
  top-k by score (``class_ids`` defaults to a ``(1, topk)`` row of ``-1``);
* Grad-CAM weights ``w_ck = GAP_ij(d s_c / d F_k)`` (paper eq. 1), from
  - the analytic form for a GAP + linear head: ``w_ck = W[c, k] / (h w)``;
  - otherwise the head's vector-Jacobian product with one-hot cotangents,
    traced with ``make_fx`` into ordinary ATen ops (no backward in ONNX needed);
* ``A_c = ReLU(sum_k w_ck F_k)`` (eq. 2), min-max normalized by the range of its
  bilinear upsampling to the image and upsampled (:mod:`gainx.ops.cam`).

A target layer whose output is not ``(N, C, h, w)`` (channels-last Swin
stages, ViT tokens) goes through a reshape transform ``T``
(:mod:`gainx.attention.layout`), applied to F and, separately, to its
gradient: ``w_ck = GAP_ij(T(d s_c / d F))_k``, ``A_c = ReLU(sum_k w_ck T(F)_k)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gainx.attention.head import find_linear_head
from gainx.attention.layout import ReshapeTransform, apply_transform, feature_layout
from gainx.export.decomp import export_decompositions, pool_by_matrices
from gainx.export.errors import first_line
from gainx.export.split import input_size_is_fixed, split_at_layer
from gainx.ops import weighted_maps


def requested_or_topk(scores: Tensor, class_ids: Tensor) -> Tensor:
    """``class_ids`` (broadcast to ``(N, K)``) where ``>= 0``, else the top-k class of that rank."""
    top = scores.topk(class_ids.shape[1], dim=1).indices
    return torch.where(class_ids < 0, top, class_ids)


def one_hot(classes: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """``(..., C)`` one-hot rows (comparison with ``arange``; exports without asserts)."""
    return (classes.unsqueeze(-1) == torch.arange(num_classes, device=classes.device)).to(dtype)


def head_vjp_attention(
    head: nn.Module, num_classes: int, transform: ReshapeTransform | None = None
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
    """``(F, class_ids) -> (scores, classes, w)`` with ``w[n, k] = GAP(T(d s_{c_nk} / d F_n))``.

    F is repeated K times so that one head forward and one pullback with
    ``(N K, C)`` one-hot cotangents give all K gradients (rows are independent
    in eval mode); the scores are those of the first copy. The pullback is
    ``torch.autograd.grad``: under ``torch.func.vjp`` a linear layer on tokens
    ``(N K, L, D)`` traces with N K fixed to the example's value.
    """

    def attention(features: Tensor, class_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n, k = features.shape[0], class_ids.shape[1]
        rep = features.unsqueeze(1).expand(n, k, *features.shape[1:]).reshape(n * k, *features.shape[1:])
        with torch.enable_grad():
            rep = rep.detach().requires_grad_(True)
            scores_rep = head(rep.clone())  # the head may work in place
            scores = scores_rep.detach().reshape(n, k, -1)[:, 0]
            classes = requested_or_topk(scores, class_ids)
            cotangents = one_hot(classes.reshape(-1), num_classes, scores_rep.dtype)
            (grads,) = torch.autograd.grad(scores_rep, rep, cotangents)
        grads = grads if transform is None else transform(grads)
        return scores, classes, grads.mean(dim=(2, 3)).reshape(n, k, -1)

    return attention


def trace_head_vjp(
    head: nn.Module, features: Tensor, num_classes: int, transform: ReshapeTransform | None = None
) -> nn.Module:
    """Trace :func:`head_vjp_attention` into a ``GraphModule`` of plain ATen ops.

    Symbolic tracing without duck shaping keeps N, K, h and w independent
    symbols, so the exported graph keeps dynamic batch and image sizes.
    """
    from torch.fx.experimental import _config as fx_config
    from torch.fx.experimental.proxy_tensor import make_fx

    example_ids = torch.full((features.shape[0], 2), -1, dtype=torch.long)
    try:
        with fx_config.patch(use_duck_shape=False), torch.no_grad():
            return make_fx(
                head_vjp_attention(pool_by_matrices(head), num_classes, transform),
                decomposition_table=export_decompositions(),
                tracing_mode="symbolic",
                _allow_non_fake_inputs=True,
            )(features, example_ids)
    except Exception as exc:
        raise ValueError(
            f"cannot trace the gradient of the layers after the target layer into plain operations "
            f"({first_line(exc)}); a target layer closer to the output leaves fewer layers to trace"
        ) from exc


class LinearHeadAttention(nn.Module):
    """Analytic Grad-CAM weights of a GAP + linear head: ``w_ck = W[c, k] / (h w)``.

    ``linear`` is the head's own layer (not a copy), so the exported graph stores ``W`` once.
    """

    def __init__(self, head: nn.Module, linear: nn.Linear) -> None:
        super().__init__()
        self.head = head
        self.linear = linear

    def forward(self, features: Tensor, class_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        scores = self.head(features)
        classes = requested_or_topk(scores, class_ids)
        area = features.shape[-2] * features.shape[-1]
        return scores, classes, F.embedding(classes, self.linear.weight) / area  # one Gather on W


class AttentionGraph(nn.Module):
    """``(images, class_ids) -> (scores, classes, attention)``; see the module docstring.

    ``fixed_size``: the head holds the export size's H, W (it reads the input's size after the target layer,
    :mod:`gainx.export.split`), so the graph is valid at that size only.
    """

    def __init__(
        self,
        body: nn.Module,
        head_attention: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        dtype: torch.dtype = torch.float32,
        transform: ReshapeTransform | None = None,
        fixed_size: bool = False,
    ) -> None:
        super().__init__()
        self.fixed_size = fixed_size
        self.body = body
        self.head_attention = head_attention
        self.transform = transform
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.dtype = dtype

    def forward(self, images: Tensor, class_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = ((images - self.mean) / self.std).to(self.dtype)
        features = self.body(x)
        scores, classes, weights = self.head_attention(features.clone(), class_ids)  # keeps F if the head is in place
        maps = features if self.transform is None else self.transform(features)
        attention = weighted_maps(weights, maps, (images.shape[-2], images.shape[-1]))
        # [0, 1] exactly: ONNX Runtime's Resize can round a map's minimum a few 1e-10 below the low-resolution one
        return scores.float(), classes, attention.float().clamp(0, 1)


def build_attention_graph(
    model: nn.Module,
    target_layer: str,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    example_images: Tensor,
    dtype: torch.dtype = torch.float32,
    reshape_transform: ReshapeTransform | None = None,
) -> AttentionGraph:
    """Split ``model`` (eval mode) at ``target_layer`` and assemble its :class:`AttentionGraph`.

    ``example_images`` (N >= 2, normalized or not) fix the feature shape used
    to trace a non-linear head and to read the layout of the target layer's
    output when ``reshape_transform`` is ``None``
    (:func:`gainx.attention.layout.feature_layout`).
    """
    model = copy.deepcopy(model).eval().to(dtype)  # the caller's model keeps its mode and dtype
    example = example_images.to(dtype)
    body, head = split_at_layer(model, target_layer, example)
    with torch.no_grad():
        features = body(example)
    transform = reshape_transform
    if transform is None:
        prefix = getattr(model, "num_prefix_tokens", None)
        transform = feature_layout(features, example_images.shape[-2:], prefix if isinstance(prefix, int) else None)
    if transform is not None:
        apply_transform(features, transform)  # clear error for a transform that does not give (N, C, h, w)
    linear = find_linear_head(model, target_layer) if transform is None else None
    if linear is not None:
        head_attention: nn.Module = LinearHeadAttention(head, linear)
    else:
        head_attention = trace_head_vjp(head, features, num_classes, transform)
    return AttentionGraph(body, head_attention, mean, std, dtype, transform, input_size_is_fixed(head)).eval()
