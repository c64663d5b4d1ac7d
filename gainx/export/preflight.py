"""Checks on the model before it is split and traced, with errors that say the cause and a fix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gainx.attention.capture import capture_output, resolve_layer
from gainx.export.verify import other_size


def use_eager_attention(model: nn.Module) -> None:
    """Switch Hugging Face attention computed by a fused kernel (``sdpa``, ...) to ``eager``, in place.

    torch.onnx cannot decompose ``scaled_dot_product_attention`` with a
    dynamic batch (Swin's windowed attention fails with a stride error);
    the eager implementation is the same math in plain matmul and softmax.
    Call it on the export's own copy of the model.
    """
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "_attn_implementation", "eager") not in (None, "eager") and callable(
            getattr(module, "set_attn_implementation", None)
        ):
            module.set_attn_implementation("eager")


def check_differentiable(model: nn.Module, target_layer: str, example: Tensor) -> None:
    """Raise ``ValueError`` unless the scores depend differentiably on the target layer's output F.

    Grad-CAM weights are ``GAP(d s_c / d F)`` (paper eq. 1): a ``.detach()``,
    ``torch.no_grad()``, an integer cast or an ``argmax`` between F and the
    scores leaves no gradient, and the maps would be blank.
    """
    with capture_output(resolve_layer(model, target_layer)) as captured, torch.enable_grad():
        scores = model(example)  # a layer that returns no tensor raises a TypeError that says so
    features = captured.features
    used = scores.requires_grad and torch.autograd.grad(scores.sum(), features, allow_unused=True)[0] is not None
    if not used:
        raise ValueError(
            f"the scores of {type(model).__name__} do not depend differentiably on the output of {target_layer!r} "
            f"(a .detach(), torch.no_grad(), integer cast or argmax after it), so its Grad-CAM maps are blank; "
            f"choose a target layer after which the computation is differentiable"
        )


def check_spatial_evidence(graph: nn.Module, example: Tensor, target_layer: str) -> None:
    """Raise ``ValueError`` when every Grad-CAM weight of ``graph`` (an ``AttentionGraph``) is zero on ``example``.

    That happens when the scores depend on F but not on its spatial positions:
    after a ViT's last block only the class token reaches the head, so the
    gradients of the patch tokens, hence all maps, are zero.
    """
    with torch.no_grad():
        features = graph.body(((example - graph.mean) / graph.std).to(graph.dtype))
        ids = torch.full((example.shape[0], 1), -1, dtype=torch.long)
        weights = graph.head_attention(features, ids)[2]
    if not bool(weights.abs().amax() > 0):
        raise ValueError(
            f"the scores do not depend on the spatial positions of {target_layer!r}'s output: every Grad-CAM "
            f"weight is zero (e.g. after a ViT's last block only the class token reaches the head); choose a "
            f"layer whose positions feed the scores. A ViT that pools its class token cannot be cut at a block's "
            f"norm either (the residual stream bypasses it): export at an earlier block's output (the blocks after "
            f"it carry the patch tokens to the class token), compute its maps in PyTorch (gainx.attention_maps at "
            f"the last block's ln_1 / norm1), or use a ViT that averages its patch tokens (timm global_pool='avg'), "
            f"which exports at its last block"
        )


def accepts_other_sizes(model: nn.Module, image_size: Sequence[int]) -> bool:
    """Whether the model runs at another image size (no H, W baked in, e.g. by flatten -> linear)."""
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, *other_size(image_size)))
    except Exception:  # noqa: BLE001 - any failure means: export for image_size only
        return False
    return True
