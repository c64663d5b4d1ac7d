"""Grad-CAM attention for any classifier, differentiable (paper eq. 1-2).

``class_gradients`` is the one piece of code behind the public
:func:`attention_maps`, the GAIN training objective and the guidance losses:
it returns, for P (image, class) pairs, d s_c / d features at the target layer.
:func:`class_evidence` builds the signed (pre-ReLU) evidence of every class on it.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn

from gainx.attention.capture import capture_output, resolve_layer
from gainx.attention.head import find_linear_head
from gainx.ops import class_attention, gradcam


def pairs_by_rank(index: Tensor) -> Tensor:
    """Rank of each pair among the pairs of its image (0 for the first class, 1, ...).

    ``index`` must be sorted; pairs of equal rank belong to distinct images and
    can share one backward pass.
    """
    if index.numel() == 0:
        return index.clone()
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    starts = torch.nonzero(first).squeeze(1)
    counts = torch.diff(torch.cat([starts, starts.new_tensor([index.numel()])]))
    return torch.arange(index.numel(), device=index.device) - starts.repeat_interleave(counts)


def class_gradients(scores: Tensor, features: Tensor, index: Tensor, classes: Tensor, create_graph: bool) -> Tensor:
    """``d scores[index[p], classes[p]] / d features[index[p]]`` for every pair p.

    One backward pass per rank (see :func:`pairs_by_rank`), so a single-label
    batch costs one pass whatever its size. With ``create_graph=True`` the
    gradients carry a graph (second-order GAIN: L_am trains through the
    Grad-CAM weights too); otherwise they are detached (eq. 1 as published).

    Images are independent in eval mode. In train mode a batch-norm layer
    *after* the target layer couples the images of a batch through its batch
    statistics, so each gradient also carries the (small) cross-image terms,
    as in every batched Grad-CAM.
    """
    grads = features.new_empty((index.numel(), *features.shape[1:]))
    rank = pairs_by_rank(index)
    num_ranks = int(rank.max()) + 1 if rank.numel() else 0
    for r in range(num_ranks):
        sel = torch.nonzero(rank == r).squeeze(1)
        onehot = torch.zeros_like(scores)
        onehot[index[sel], classes[sel]] = 1.0
        (g,) = torch.autograd.grad(scores, features, onehot, retain_graph=True, create_graph=create_graph)
        rows = g.index_select(0, index[sel])
        grads = grads.index_copy(0, sel, rows) if create_graph else grads.index_copy_(0, sel, rows.detach())
    return grads


def class_evidence(scores: Tensor, features: Tensor, rows: Tensor, create_graph: bool) -> Tensor:
    """Signed Grad-CAM evidence ``E_c = sum_k GAP(d s_c / d f_k) f_k`` of every class (eq. 1-2 without the ReLU).

    Returns ``(G, C, h, w)`` for the images ``rows`` (sorted, unique), at the
    target layer's resolution; one backward pass per class.
    """
    num_classes = scores.shape[1]
    index = rows.repeat_interleave(num_classes)
    classes = torch.arange(num_classes, device=rows.device).repeat(rows.numel())
    grads = class_gradients(scores, features, index, classes, create_graph=create_graph)
    weights = grads.mean(dim=(2, 3)).view(rows.numel(), num_classes, -1)  # (G, C, channels)
    # contracted per image: no copy of the features per class
    return torch.einsum("gkc,gchw->gkhw", weights, features.index_select(0, rows))


def select_classes(scores: Tensor, classes: Tensor | list | None, topk: int) -> Tensor:
    """The (B, K) class ids to explain: given ones (validated) or the top-k scores."""
    num_images, num_classes = scores.shape
    if classes is None:
        if not 1 <= topk <= num_classes:
            raise ValueError(f"topk must be in [1, {num_classes}], got {topk}")
        return scores.detach().topk(topk, dim=1).indices
    classes = torch.as_tensor(classes, device=scores.device)
    if classes.dtype.is_floating_point or classes.dtype == torch.bool:
        raise TypeError(f"classes must be an integer tensor, got dtype {classes.dtype}")
    if classes.dim() == 1:
        classes = classes.unsqueeze(1)
    if classes.dim() != 2 or classes.shape[0] != num_images:
        raise ValueError(f"classes must have shape ({num_images}, K), got {tuple(classes.shape)}")
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        raise ValueError(
            f"class ids must be in [0, {num_classes}), got range [{int(classes.min())}, {int(classes.max())}]"
        )
    return classes.long()


_HEADS: WeakKeyDictionary[nn.Module, dict[tuple[int, bool], tuple[tuple[int, ...], nn.Linear | None]]] = (
    WeakKeyDictionary()
)


def _linear_head(model: nn.Module, layer: nn.Module) -> nn.Linear | None:
    """:func:`find_linear_head`, cached per model, layer and train/eval mode (it traces the model).

    A hit also needs the same submodules as when it was traced: replacing one
    (``model.fc = nn.Linear(...)`` when fine-tuning, another pooling) traces again.
    """
    cache = _HEADS.setdefault(model, {})
    key = (id(layer), model.training)
    modules = tuple(id(m) for m in model.modules())
    if key not in cache or cache[key][0] != modules:
        cache[key] = (modules, find_linear_head(model, layer))
    return cache[key][1]


def attention_maps(
    model: nn.Module,
    images: Tensor,
    target_layer: str | nn.Module,
    classes: Tensor | list | None = None,
    topk: int = 1,
    size: tuple[int, int] | None = None,
    create_graph: bool = False,
    analytic_head: bool = True,
) -> tuple[Tensor, Tensor]:
    """Class scores and Grad-CAM maps of ``model`` at ``target_layer``.

    ``A_c = ReLU(sum_k GAP(d s_c / d f_k) f_k)`` (eq. 1-2), bilinearly
    upsampled to ``size`` (default: the input size) and min-max normalized per
    map (a constant map gives zeros).

    Args:
        images: ``(B, 3, H, W)`` network inputs.
        classes: ``(B, K)`` (or ``(B,)``) class ids to explain; ``None`` takes
            the ``topk`` highest-scoring classes of each image.
        create_graph: keep the graph (maps differentiable, also through the
            Grad-CAM weights); otherwise outputs are detached.
        analytic_head: when the layer is followed by global average pooling
            and one linear layer (:func:`gainx.attention.head.find_linear_head`),
            use the closed form ``d s_c / d f = weight[c] / (h w)``: all maps
            come from one batched product, no backward pass
            (:func:`gainx.ops.class_attention`). Other heads, or ``False``,
            take one backward pass per class rank.

    Returns:
        ``scores (B, C)`` and ``maps (B, K, H, W)`` in ``[0, 1]``.

    Maps are produced by the fused kernels of the ``gainx._C`` extension when
    it is built (eager PyTorch otherwise). The model's train/eval mode is left
    as it is; no hook outlives the call.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    size = tuple(size) if size is not None else (images.shape[-2], images.shape[-1])
    layer = resolve_layer(model, target_layer)
    head = _linear_head(model, layer) if analytic_head else None
    with torch.set_grad_enabled(create_graph or head is None), capture_output(layer) as captured:
        scores = model(images)
        if scores.dim() != 2:
            raise ValueError(f"model must return (B, num_classes) scores, got shape {tuple(scores.shape)}")
        chosen = select_classes(scores, classes, topk)
        features = captured.features
        if head is not None:
            maps = class_attention(features, head.weight.to(features.dtype), chosen, size)
        else:
            num_images, k = chosen.shape
            index = torch.arange(num_images, device=scores.device).repeat_interleave(k)
            grads = class_gradients(scores, features, index, chosen.reshape(-1), create_graph)
            maps = gradcam(features.index_select(0, index), grads, size).reshape(num_images, k, *size)
    if not create_graph:
        scores, maps = scores.detach(), maps.detach()
    return scores, maps
