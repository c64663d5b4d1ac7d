"""Selectable guidance losses for the S_e stream of GAINext (paper sec. 3.2).

All losses act only on the images that carry a pixel guide ``H`` (a mask, or
boxes rasterized into one; see docs/data.md): ``H[c]`` is 1 on the pixels of
class c, 0 elsewhere and 255 (ignored) where there is no supervision. The
*background* ``B`` of an image is the set of valid pixels that belong to no
class (``H[c] == 0`` for every c). ``E_c = sum_k w_k^c f_k`` is the signed,
pre-ReLU Grad-CAM evidence of class c at the target layer (eq. 1-2 without the
ReLU), bilinearly upsampled to the image size.

* ``paper``: eq. 7 on the min-max-normalized map of each ground-truth class,
  ``L_e = 1/n sum_c mean_valid (A_c - H_c)^2`` (:func:`gainx.losses.terms.guidance_loss`).
  A blank map (``E_c <= 0`` everywhere) is a stationary point: the ReLU of eq. 2
  and the flat-map rule of the normalization pass no gradient.
* ``scaled``: eq. 7 on the signed evidence of each ground-truth class scaled by
  a constant, ``N_c = E_c / (max_xy |E_c| + eps)`` (the scale without gradient),
  ``L_e = 1/n sum_c mean_valid (N_c - H_c)^2``. Where the map is blank or flat
  the object pixels still pull ``E_c`` up, so the loss cannot collapse to zero
  evidence; on a map that is zero or positive it equals eq. 7 with max instead
  of min-max normalization.
* ``counterfactual``: ``scaled`` plus counterfactual images: each step pastes
  annotated objects onto cleaned backgrounds of annotated images of other
  classes (label kept; :mod:`gainx.losses.counterfactual`), and these images
  join the batch for every stream, so the context stops predicting the label
  (Xiao et al. 2020).
* ``all_classes``: every class's ReLU'd map on one scale per image, the peak of
  its ground-truth maps, ``N_c = ReLU(E_c) / (max_{c' in GT} max_xy ReLU(E_c') + eps)``,
  must match its guide channel: the mask for a ground-truth class, zero
  everywhere for every other class,
  ``L = mean_images 1/C sum_c mean_valid (N_c - H_c)^2``. The scale is a
  constant (no gradient): were it differentiated, a peak on the background
  (a decoy) could be *raised* to shrink every other ratio.
  With a per-map min-max a map can never be zero, so the paper's
  normalization cannot express "no evidence for this class".
* ``signed``: the background carries no evidence, for or against, for any
  class, ``L = mean_images 1/C sum_c mean_{B} (E_c / s)^2`` where
  ``s = max_{c' in GT} max_xy |E_c'| + eps`` (one scale per image, so the
  loss does not depend on the overall magnitude of the evidence; a constant
  without gradient, for the reason above). The ReLU of eq. 2 hides negative
  evidence: a decoy can *lower* the scores of the other classes while the
  ground-truth map looks clean; this loss sees both signs.
* ``rrr``: "Right for the Right Reasons" (Ross et al. 2017): the input gradient
  of the summed log-probabilities must vanish on the background,
  ``L = mean_images sum_{x in B} sum_ch (d/dI_x sum_c log p_c)^2``
  (log-softmax for single-label, log-sigmoid for multi-label models); it needs
  ``create_graph`` through the whole network. As Ross et al. do, its weight is
  calibrated so the term starts comparable to the cross-entropy: ``GAIN`` scales
  it by ``L_cl / L_rrr`` measured (without gradient) at the first guided step,
  then keeps that constant (``rrr_scale``).
* ``rrr_classes``: ``rrr`` for every class's log-probability, not their sum,
  ``L = mean_images sum_{x in B} sum_ch sum_c (d log p_c / dI_x)^2``. The sum
  has a blind direction: ``d/ds_j sum_c log p_c = 1 - C p_j``, so background
  evidence that moves the scores orthogonally to that vector (raising the
  predicted class and one unlikely class together, say) changes the prediction
  while ``rrr`` stays zero. One Gaussian projection per image and step,
  ``(d/dI_x sum_c r_c log p_c)^2`` with ``r ~ N(0, I)``, is an unbiased
  estimate of the per-class sum (Hutchinson 1990) at the cost of one double
  backward, like ``rrr``; calibrated the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gainx.losses.terms import masked_squared_error
from gainx.ops.cam import EPS, upsample

GUIDANCES = ("paper", "scaled", "all_classes", "signed", "rrr", "rrr_classes", "counterfactual")
INPUT_GRADIENT_GUIDANCES = ("rrr", "rrr_classes")  # differentiate the scores w.r.t. the input images


def check_guidance(name: str) -> str:
    """Return ``name`` if it is a known guidance loss, else raise naming the choices."""
    if name not in GUIDANCES:
        raise ValueError(f"guidance must be one of {GUIDANCES}, got {name!r}")
    return name


def scaled_maps(evidence: Tensor, size: tuple[int, int]) -> Tensor:
    """``(P, h, w)`` signed evidence -> ``(P, H, W)`` maps ``E / (max |E| + eps)``, the scale without gradient."""
    maps = upsample(evidence, size)
    scale = maps.detach().abs().flatten(1).amax(dim=1)[:, None, None]
    return maps / (scale + EPS)


def background(guide: Tensor) -> Tensor:
    """``(G, K, H, W)`` uint8 guides -> ``(G, H, W)`` bool: valid pixels of no class."""
    return (guide == 0).all(dim=1)


def _gt_peak(values: Tensor, labels: Tensor) -> Tensor:
    """``(G, 1, 1, 1)`` maximum of ``values (G, C, H, W)`` over each image's ground-truth classes."""
    peaks = values.flatten(2).amax(dim=2)
    peaks = torch.where(labels > 0.5, peaks, torch.zeros_like(peaks))
    return peaks.amax(dim=1)[:, None, None, None]


def all_classes_loss(evidence: Tensor, guide: Tensor, labels: Tensor) -> Tensor:
    """Every class's ReLU'd map, scaled by the ground-truth peak, against its guide channel.

    Args:
        evidence: ``(G, C, h, w)`` signed evidence (:func:`gainx.attention.class_evidence`).
        guide: ``(G, C, H, W)`` uint8 guides of the same images.
        labels: ``(G, C)`` multi-hot ground truth.
    """
    _check(evidence, guide, labels)
    maps = upsample(F.relu(evidence), (guide.shape[-2], guide.shape[-1]))
    maps = maps / (_gt_peak(maps, labels).detach() + EPS)
    return masked_squared_error(maps, guide).mean(dim=1).mean()


def signed_loss(evidence: Tensor, guide: Tensor, labels: Tensor) -> Tensor:
    """Squared signed evidence of every class on the background, scaled per image."""
    _check(evidence, guide, labels)
    maps = upsample(evidence, (guide.shape[-2], guide.shape[-1]))
    maps = maps / (_gt_peak(maps.abs(), labels).detach() + EPS)
    bg = background(guide).unsqueeze(1).to(maps.dtype)
    per_map = (maps.pow(2) * bg).flatten(2).sum(2) / bg.flatten(2).sum(2).clamp_min(1.0)
    return per_map.mean(dim=1).mean()


def rrr_loss(
    images: Tensor, scores: Tensor, rows: Tensor, guide: Tensor, multilabel: bool, each_class: bool = False
) -> Tensor:
    """Ross et al. 2017: squared input gradient of ``sum_c log p_c`` on the background; with
    ``each_class``, of ``sum_c r_c log p_c``, ``r ~ N(0, I)`` per image (``rrr_classes``).

    ``images`` must require grad and ``scores`` must have been computed from
    them; the result carries a graph (``create_graph=True``).
    """
    if not images.requires_grad:
        raise ValueError("rrr guidance needs images that require grad (set before the forward pass)")
    if guide.shape[0] != rows.numel() or guide.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"guide {tuple(guide.shape)} does not match {rows.numel()} images of size {tuple(images.shape[-2:])}"
        )
    logp = (F.logsigmoid(scores) if multilabel else F.log_softmax(scores, dim=1)).index_select(0, rows)
    if each_class:
        logp = logp * torch.randn_like(logp)
    (grad,) = torch.autograd.grad(logp.sum(), images, create_graph=True)
    bg = background(guide).to(grad.dtype)
    return (grad.index_select(0, rows).pow(2).sum(dim=1) * bg).flatten(1).sum(1).mean()


def _check(evidence: Tensor, guide: Tensor, labels: Tensor) -> None:
    if (
        evidence.dim() != 4
        or guide.dim() != 4
        or evidence.shape[:2] != guide.shape[:2]
        or labels.shape != evidence.shape[:2]
    ):
        raise ValueError(
            f"evidence {tuple(evidence.shape)}, guide {tuple(guide.shape)} and labels {tuple(labels.shape)} "
            "must be (G, C, h, w), (G, C, H, W) and (G, C)"
        )
