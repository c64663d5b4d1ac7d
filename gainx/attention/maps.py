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
from gainx.attention.double_backward import twice_differentiable
from gainx.attention.head import find_linear_head
from gainx.attention.layout import ReshapeTransform, apply_transform, feature_layout
from gainx.attention.outputs import OutputSelector, select_scores
from gainx.ops import class_attention, gradcam


def pairs_by_rank(index: Tensor) -> Tensor:
    """Rank of each pair among the pairs of its image (0 for the first class, 1, ...).

    ``index`` must be sorted; pairs of equal rank belong to distinct images and
    can share one backward pass. ``rank_p = p - start_p`` with ``start_p`` the
    position of the first pair of p's image: a running maximum of the positions
    where the image changes (fixed-shape, nothing waits for the device).
    """
    if index.numel() == 0:
        return index.clone()
    positions = torch.arange(index.numel(), device=index.device)
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    starts = torch.where(first, positions, torch.zeros_like(positions)).cummax(dim=0).values
    return positions - starts


def class_gradients(
    scores: Tensor,
    features: Tensor,
    index: Tensor,
    classes: Tensor,
    create_graph: bool,
    num_ranks: int | None = None,
) -> Tensor:
    """``d scores[index[p], classes[p]] / d features[index[p]]`` for every pair p.

    One backward pass per rank (see :func:`pairs_by_rank`), so a single-label
    batch costs one pass whatever its size. With ``create_graph=True`` the
    gradients carry a graph (second-order GAIN: L_am trains through the
    Grad-CAM weights too); otherwise they are detached (eq. 1 as published).

    ``num_ranks`` is the most pairs any image has (the number of passes) when the
    caller knows it on the host; ``None`` reads it off ``index``, which waits for
    the device once. Given it, the call is free of host syncs: pass r seeds the
    pairs of rank r (a fixed-shape scatter of the rank mask) and pair p reads
    row ``index[p]`` of pass ``rank[p]`` from the stacked passes (one gather).

    Images are independent in eval mode. In train mode a batch-norm layer
    *after* the target layer couples the images of a batch through its batch
    statistics, so each gradient also carries the (small) cross-image terms,
    as in every batched Grad-CAM.
    """
    rank = pairs_by_rank(index)
    if num_ranks is None:
        num_ranks = int(rank.max()) + 1 if rank.numel() else 0
    if num_ranks == 0:
        return features.new_zeros((0, *features.shape[1:]))
    passes = []
    for r in range(num_ranks):
        seeds = (rank == r).to(scores.dtype)
        onehot = scores.new_zeros(scores.numel()).scatter_add_(0, index * scores.shape[1] + classes, seeds)
        onehot = onehot.view(scores.shape)
        (g,) = torch.autograd.grad(scores, features, onehot, retain_graph=True, create_graph=create_graph)
        passes.append(g if create_graph else g.detach())
    # (num_ranks * B, ...): row r * B + i is image i of pass r (one pass: no copy)
    stacked = passes[0] if num_ranks == 1 else torch.stack(passes).flatten(0, 1)
    return stacked.index_select(0, rank * features.shape[0] + index)


def class_evidence(
    scores: Tensor, output: Tensor, rows: Tensor, create_graph: bool, transform: ReshapeTransform | None = None
) -> Tensor:
    """Signed Grad-CAM evidence ``E_c = sum_k GAP(d s_c / d f_k) f_k`` of every class (eq. 1-2 without the ReLU).

    ``output`` is the captured target-layer output; ``transform`` maps it (and
    its gradients) to ``(B, C, h, w)`` features f (:mod:`gainx.attention.layout`).
    Returns ``(G, C, h, w)`` for the images ``rows`` (sorted, unique), at the
    target layer's resolution; one backward pass per class.
    """
    num_classes = scores.shape[1]
    index = rows.unsqueeze(1).expand(-1, num_classes).reshape(-1)
    classes = torch.arange(num_classes, device=rows.device).repeat(rows.numel())
    grads = class_gradients(scores, output, index, classes, create_graph=create_graph, num_ranks=num_classes)
    grads = apply_transform(grads, transform)
    weights = grads.mean(dim=(2, 3)).view(rows.numel(), num_classes, -1)  # (G, C, channels)
    # contracted per image: no copy of the features per class
    return torch.einsum("gkc,gchw->gkhw", weights, apply_transform(output.index_select(0, rows), transform))


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


_HEADS: WeakKeyDictionary[nn.Module, dict[tuple, tuple[tuple[int, ...], nn.Linear | None]]] = WeakKeyDictionary()


def _linear_head(model: nn.Module, layer: nn.Module) -> nn.Linear | None:
    """:func:`find_linear_head`, cached per model, layer and train/eval mode of every submodule (it traces the model).

    The key holds each submodule's mode, not only the model's: a dropout
    switched to train mode inside an eval model (MC dropout) makes the head
    non-linear in the features, and the traced answer changes. A hit also
    needs the same submodules as when it was traced: replacing one
    (``model.fc = nn.Linear(...)`` when fine-tuning, another pooling) traces again.
    """
    cache = _HEADS.setdefault(model, {})
    modules = list(model.modules())
    key = (id(layer), tuple(m.training for m in modules))
    ids = tuple(id(m) for m in modules)
    if key not in cache or cache[key][0] != ids:
        cache[key] = (ids, find_linear_head(model, layer))
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
    reshape_transform: ReshapeTransform | None = None,
    output: OutputSelector = None,
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
            (:func:`gainx.ops.class_attention`). Other heads, ``False``, or a
            ``reshape_transform``, take one backward pass per class rank.
        reshape_transform: callable mapping the layer's output (and, separately,
            its gradient) to ``(B, C, h, w)``, as in pytorch-grad-cam. ``None``
            reads ``(B, C, h, w)`` maps, channels-last ``(B, h, w, C)`` maps and
            ViT tokens ``(B, prefix + h w, D)`` from their shape
            (:func:`gainx.attention.layout.feature_layout`).
        output: where the scores are in what the model returns: a key or
            attribute (``"logits"`` for Hugging Face models), a tuple index or a
            callable (:mod:`gainx.attention.outputs`); ``None`` for a tensor.

    Returns:
        ``scores (B, C)`` and ``maps (B, K, H, W)`` in ``[0, 1]``.

    Maps are produced by the fused kernels of the ``gainx._C`` extension when
    it is built (eager PyTorch otherwise). Works inside ``torch.no_grad()`` and
    ``torch.inference_mode()``: the forward pass runs with what the maps need
    enabled. The model's train/eval mode is left as it is; no hook outlives the call.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    size = tuple(size) if size is not None else (images.shape[-2], images.shape[-1])
    layer = resolve_layer(model, target_layer)
    head = _linear_head(model, layer) if analytic_head and reshape_transform is None else None
    with torch.inference_mode(False):
        if images.is_inference():  # made under inference_mode: autograd cannot save it
            images = images.clone()
        with (
            torch.set_grad_enabled(create_graph or head is None),
            capture_output(layer) as captured,
            twice_differentiable(create_graph and head is None),
        ):
            scores = select_scores(model(images), output)
            chosen = select_classes(scores, classes, topk)
            if head is not None:  # a GAP + linear head pools dims (2, 3): the output is (B, C, h, w)
                features = apply_transform(captured.features, None)
                maps = class_attention(features, head.weight.to(features.dtype), chosen, size)
            else:
                maps = _gradient_maps(
                    model, images, scores, captured.features, chosen, size, create_graph, reshape_transform
                )
    if not create_graph:
        scores, maps = scores.detach(), maps.detach()
    return scores, maps


def _gradient_maps(
    model: nn.Module,
    images: Tensor,
    scores: Tensor,
    output: Tensor,
    chosen: Tensor,
    size: tuple[int, int],
    create_graph: bool,
    reshape_transform: ReshapeTransform | None,
) -> Tensor:
    """Maps from one backward pass per class rank, in the layer's layout read by :func:`layer_transform`."""
    transform = layer_transform(model, images, output, reshape_transform)
    num_images, k = chosen.shape
    index = torch.arange(num_images, device=scores.device).unsqueeze(1).expand(-1, k).reshape(-1)
    grads = class_gradients(scores, output, index, chosen.reshape(-1), create_graph, num_ranks=k)
    grads = apply_transform(grads, transform)
    features = apply_transform(output.index_select(0, index), transform)
    return gradcam(features, grads, size).reshape(num_images, k, *size)


def layer_transform(
    model: nn.Module, images: Tensor, output: Tensor, reshape_transform: ReshapeTransform | None
) -> ReshapeTransform | None:
    """``reshape_transform`` if given, else the layout read off the output's shape (``None``: already (B, C, h, w))."""
    if reshape_transform is not None:
        return reshape_transform
    prefix = getattr(model, "num_prefix_tokens", None)
    return feature_layout(output, images.shape[-2:], prefix if isinstance(prefix, int) else None)
