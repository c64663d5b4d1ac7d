"""The loss terms of GAIN and GAINext, each on its own (paper eq. 5-8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gainx.data.records import IGNORE

AM_SCORES = ("auto", "sigmoid", "softmax", "logit")
AM_GRADIENTS = ("network", "attention")  # what L_am trains (gainx.losses.gain.GAIN, am_gradient)


def classification_losses(scores: Tensor, labels: Tensor, multilabel: bool) -> Tensor:
    """``(B,)`` L_cl of each image: multi-label soft margin (multi-label data, as in the paper) or
    cross-entropy.

    A row of ``labels`` with no class (all zeros; an object-free counterfactual image) asks for
    every class absent (multi-label) or, with cross-entropy, for the uniform distribution:
    ``l_i = -(1/C) sum_c log p_ic``.
    """
    if multilabel:
        return F.multilabel_soft_margin_loss(scores, labels.to(scores.dtype), reduction="none")
    logp = F.log_softmax(scores, dim=1)
    per_image = F.nll_loss(logp, labels.argmax(dim=1), reduction="none")  # cross-entropy
    return torch.where(labels.amax(dim=1) > 0.5, per_image, -logp.mean(dim=1))


def classification_loss(scores: Tensor, labels: Tensor, multilabel: bool) -> Tensor:
    """L_cl: the mean of :func:`classification_losses`."""
    return classification_losses(scores, labels, multilabel).mean()


def weighted_mean(per_image: Tensor, weights: Tensor) -> Tensor:
    """``sum_i w_i l_i / sum_i w_i``: L_cl with each image's share given by ``weights`` (``(B,)``)."""
    if weights.shape != per_image.shape:
        raise ValueError(f"weights must be ({per_image.shape[0]},), got {tuple(weights.shape)}")
    return (per_image * weights).sum() / weights.sum()


def per_image_mean(values: Tensor, index: Tensor, num_images: int, counted: Tensor | None = None) -> Tensor:
    """Average pair values per image (the 1/n sum_c of eq. 5 and 7), then over images.

    ``mean_{i: n_i > 0} (1/n_i) sum_{p: index_p = i} values_p`` with ``n_i`` the pairs of image i
    (0 without pairs). ``counted`` (``(P,)`` 0/1, default all 1) leaves pairs out: they add to
    neither sum nor count, and an image with none counted is left out. Fixed-shape: the sums and
    counts are scattered into ``(num_images,)`` tensors and images without pairs are masked out,
    so nothing waits for the device.
    """
    if values.numel() == 0:
        return values.new_zeros(())
    counted = torch.ones_like(values) if counted is None else counted.to(values.dtype)
    sums = values.new_zeros(num_images).index_add(0, index, values * counted)
    counts = values.new_zeros(num_images).index_add(0, index, counted)
    present = counts > 0
    per_image = torch.where(present, sums / counts.clamp_min(1.0), torch.zeros_like(sums))
    return per_image.sum() / present.sum().to(values.dtype)


def am_class_score(scores_am: Tensor, classes: Tensor, kind: str, multilabel: bool) -> Tensor:
    """``s_c(I*_c)`` of eq. 5 for each pair, as the probability the model gives class c.

    The paper minimizes "the prediction score". A raw logit is unbounded below,
    so minimizing it lets the network win by pushing logits of erased images to
    minus infinity instead of widening its attention; we therefore use the
    model's own probability: sigmoid for multi-label models (the same
    per-class probability the soft-margin loss trains) and softmax for
    single-label ones (the probability cross-entropy trains). ``kind`` may force
    ``"sigmoid"``, ``"softmax"`` or the raw ``"logit"``.
    """
    if kind not in AM_SCORES:
        raise ValueError(f"am score must be one of {AM_SCORES}, got {kind!r}")
    if kind == "auto":
        kind = "sigmoid" if multilabel else "softmax"
    if kind == "sigmoid":
        probs = torch.sigmoid(scores_am)
    elif kind == "softmax":
        probs = torch.softmax(scores_am.float(), dim=1)
    else:
        probs = scores_am
    return probs.gather(1, classes.unsqueeze(1)).squeeze(1)


def attention_mining_loss(
    scores_am: Tensor, index: Tensor, classes: Tensor, num_images: int, kind: str, multilabel: bool
) -> Tensor:
    """L_am = 1/n sum_c s_c(I*_c) (eq. 5), averaged over the images of the batch."""
    return per_image_mean(am_class_score(scores_am, classes, kind, multilabel).float(), index, num_images)


def masked_squared_error(maps: Tensor, targets: Tensor) -> Tensor:
    """``mean_valid (A - H)^2`` per map: ``(..., H, W)`` maps and uint8 guides -> ``(...)``.

    Guides hold 1 (object), 0 (background) or :data:`~gainx.data.records.IGNORE`
    (no supervision); ignored pixels count neither in the sum nor in the mean
    (a map with no valid pixel gives 0).
    """
    if maps.shape != targets.shape:
        raise ValueError(f"attention maps {tuple(maps.shape)} and guides {tuple(targets.shape)} differ in shape")
    valid = (targets != IGNORE).to(maps.dtype)
    sq = (maps - targets.to(maps.dtype) * valid).pow(2) * valid
    return sq.flatten(-2).sum(-1) / valid.flatten(-2).sum(-1).clamp_min(1.0)


def guidance_loss(maps: Tensor, targets: Tensor, index: Tensor, num_images: int) -> Tensor:
    """L_e = 1/n sum_c mean_pixels (A_c - H_c)^2 (eq. 7) over guided pairs.

    A pair whose guide has no valid pixel (255 everywhere) carries no supervision: it is left out
    of the averages, as an image without a guide is.

    Args:
        maps: ``(P, H, W)`` normalized attention of the guided pairs.
        targets: ``(P, H, W)`` uint8 guides: 1 object, 0 background, 255 ignore.
    """
    supervised = (targets != IGNORE).flatten(1).any(1)
    return per_image_mean(masked_squared_error(maps, targets).float(), index, num_images, supervised)
