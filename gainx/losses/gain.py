"""The GAIN / GAINext training objective as one ``nn.Module`` (paper eq. 1-8).

One forward pass of :class:`GAIN` runs the three streams that share the
classifier's weights:

* S_cl: scores of the images and L_cl;
* S_am: Grad-CAM attention A_c of every ground-truth class c (eq. 1-2), soft
  mask T(A_c) (eq. 4), erased image I*_c = I - T(A_c) * I (eq. 3; or filled from
  its surroundings, ``am_fill``), its scores and L_am (eq. 5);
* S_e: L_e (eq. 7) between A_c and the pixel guide H_c, on the samples that
  carry one (masks, or boxes rasterized into masks), or another guidance loss
  (:mod:`gainx.losses.guidance`). With ``guidance="counterfactual"`` the batch
  is first extended with counterfactual images (annotated objects pasted onto
  backgrounds of other classes, :mod:`gainx.losses.counterfactual`) that take
  part in every stream.

Totals: ``L_self = L_cl + alpha L_am`` (eq. 6), ``L_ext = L_cl + alpha L_am +
omega_e L_e`` (eq. 8). Being a module, it can be wrapped in
DistributedDataParallel as a whole (one forward, one backward per step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gainx.attention import (
    OutputSelector,
    ReshapeTransform,
    apply_transform,
    capture_output,
    class_evidence,
    class_gradients,
    layer_transform,
    resolve_layer,
    select_scores,
)
from gainx.attention.double_backward import twice_differentiable
from gainx.losses.bn import frozen_bn_stats
from gainx.losses.counterfactual import CounterfactualBank, check_jitter
from gainx.losses.graphs import GraphedSteps
from gainx.losses.guidance import (
    INPUT_GRADIENT_GUIDANCES,
    all_classes_loss,
    check_guidance,
    rrr_loss,
    scaled_maps,
    signed_loss,
)
from gainx.losses.pairs import PairPlan, plan_pairs
from gainx.losses.terms import (
    AM_GRADIENTS,
    AM_SCORES,
    attention_mining_loss,
    classification_losses,
    guidance_loss,
    weighted_mean,
)
from gainx.ops import ERASE_FILLS, attention_erase, context_fill, gradcam_raw, normalize_cam, soft_mask, upsample

METHODS = ("baseline", "gain", "gainext")
ALPHA_BY_METHOD: Mapping[str, float] = MappingProxyType({"baseline": 0.0, "gain": 1.0, "gainext": 0.0})
"""The weight of L_am that ``alpha=None`` (the default) stands for: eq. 6's 1 for GAIN, whose objective is
L_am; 0 for GAINext, the default recipe (:data:`gainx.training.presets.DEFAULT`), where the validation draws
of docs/experiments.md favoured L_am off."""


@dataclass
class GAINOutput:
    """The losses of one step and what produced them."""

    loss: Tensor  # total: eq. 6 (gain), eq. 8 (gainext) or L_cl (baseline)
    loss_cl: Tensor
    loss_am: Tensor
    loss_e: Tensor
    scores: Tensor  # (B, C) scores of the images
    pair_index: Tensor  # (P,) image of each (image, ground-truth class) pair; >= B: a counterfactual image
    pair_class: Tensor  # (P,) class of each pair
    cam: Tensor | None = None  # (P, h, w) normalized low-resolution attention
    erased: Tensor | None = None  # (P, 3, H, W) erased images I* (None when alpha = 0)
    scores_am: Tensor | None = None  # (P, C) scores of the erased images (None when alpha = 0)
    counterfactual: Tensor | None = None  # (K, 3, H, W) counterfactual images appended to the batch

    def maps(self, size: tuple[int, int]) -> Tensor:
        """Full-resolution normalized attention maps ``(P, H, W)``."""
        if self.cam is None:
            raise RuntimeError("no attention was computed (method='baseline')")
        return upsample(self.cam, size)


class GAIN(nn.Module):
    """Guided Attention Inference Network objective around any classifier.

    Args:
        model: classifier returning ``(B, C)`` scores.
        target_layer: module path of the attention layer (e.g. ``"layer4"``).
        method: ``"baseline"`` (L_cl only), ``"gain"`` (eq. 6) or ``"gainext"`` (eq. 8).
        multilabel: multi-label soft margin and sigmoid scores; else
            cross-entropy and softmax scores.
        alpha: weight of L_am (eq. 6); ``None``: 1 for ``"gain"`` (the paper's), 0 for ``"gainext"``
            (the default recipe, :data:`ALPHA_BY_METHOD`).
        omega_e: weight of the guidance loss (eq. 8); the default 0.2 is the default recipe's (the
            paper's is 10: :data:`gainx.training.presets.PAPER`).
        sigma, omega: threshold and scale of the soft mask T (eq. 4).
        second_order: differentiate through the Grad-CAM weights
            (``create_graph=True``) instead of treating them as constants.
        freeze_bn_am: do not update batch-norm running statistics with the
            erased images of the attention-mining stream.
        am_score: how s_c(I*) is read off the scores, see
            :func:`gainx.losses.terms.am_class_score`.
        am_gradient: what L_am (eq. 5) trains. ``"network"`` (the paper's): the erased image is scored by
            the network being trained, so L_am's gradient also reaches the weights through that forward pass and
            can teach the classifier to score erased images low, wherever the erasure falls. ``"attention"``:
            the erased image is scored with the weights held constant, so L_am reaches them only through
            A_c (eq. 1-2) and T(A_c) (eq. 3-4): it moves the attention onto what the classifier reads, not the
            classifier onto what the attention erases. The weights are those the model registers (read
            afresh by its forward: a weight cached outside its parameters, as inside
            ``torch.nn.utils.parametrize.cached()``, is still trained); not through ``nn.DataParallel``.
        am_fill: what the erased region of I* holds. ``"zero"`` (eq. 3, the paper's): ``I* = I - T * I``, so an
            attention that covers an object exactly leaves its silhouette, and where the outline is the class
            (shapes) L_am is met only by maps that reach past the object. ``"context"``: ``I* = I - T * (I - F)``
            with ``F`` the image filled in from the pixels T keeps (:func:`gainx.ops.context_fill`, a constant to
            the gradient), so erasing the object removes its outline too.
        backend: where attention -> mask -> erase runs (:mod:`gainx.ops.attention_erase`).
        guidance: the S_e loss of ``method="gainext"``: ``"paper"`` (eq. 7), ``"scaled"``,
            ``"all_classes"``, ``"signed"``, ``"rrr"``, ``"rrr_classes"`` or ``"counterfactual"``
            (:mod:`gainx.losses.guidance`).
        reshape_transform: maps the target layer's output (and its gradient)
            to ``(B, C, h, w)``; ``None`` reads the layout off its shape
            (as :func:`gainx.attention_maps`).
        output: where the scores are in what the model returns (key, attribute,
            index or callable; :mod:`gainx.attention.outputs`).
        counterfactuals: counterfactual images added to each batch (``guidance="counterfactual"``);
            ``None`` scales them with the batch: ``ceil(B / 2)`` for a batch of ``B`` images
            (:meth:`counterfactual_count`), so they keep the same share of L_cl at any batch size.
        counterfactual_weight: weight of each counterfactual image in L_cl relative to an image of
            the batch, ``L_cl = (sum_batch l_i + w sum_cf l_j) / (B + w K)``; with ``w K > B`` most of
            L_cl comes from images whose context says nothing about their label. It is where the
            weight starts when ``counterfactual_eta > 0``.
        counterfactual_eta: step size of an online group DRO between the batch's images and the
            counterfactual ones (Sagawa et al. 2020): at each training step, before L_cl is formed from
            that step's losses, the weight becomes ``w <- w exp(eta (mean_cf l_j - mean_batch l_i))``
            (at most ``counterfactual_weight_max``), so it grows while the images whose context
            says nothing about their label are harder than the batch's (a model that reads the context)
            and shrinks while they are easier; 0 keeps ``counterfactual_weight`` fixed.
        counterfactual_weight_max: the most the group DRO may raise that weight to (``None``: no bound).
        counterfactual_jitter: what changes in each pasted object before it is moved and pasted
            (:data:`gainx.losses.counterfactual.JITTERS`): ``"none"``, ``"colour"`` (a random
            permutation of its colour channels), ``"geometry"`` (flip, rescale by ``U(0.75, 1.25)``)
            or ``"all"``.
        counterfactual_backgrounds: object-free images added to each batch (``guidance="counterfactual"``):
            cleaned backgrounds of annotated images with no label, so L_cl pulls their prediction to the
            uniform distribution (single-label) or every class to absent (multi-label); weighted like
            the pasted images (Chang et al. 2021).
        rrr_scale: weight of the ``rrr`` (or ``rrr_classes``) term inside L_e; ``None`` calibrates it at
            the first guided step to ``L_cl / L_rrr`` (Ross et al. 2017), then keeps it.
        cuda_graph: capture each step (forward and backward) in a CUDA graph and replay it while
            the batch's shapes and pair structure repeat (:mod:`gainx.losses.graphs`): CUDA tensors
            only; not with ``guidance="counterfactual"`` (its bank draws on the host) nor with
            ``rrr_scale=None`` (the calibration reads a loss on the host); under ``torch.autocast``
            with ``cache_enabled=False``. Only ``loss`` then propagates gradients; the tensors of
            :class:`GAINOutput` are the graph's outputs, overwritten by the next step of the same shapes.

    Pairs are planned on the host from ``labels`` (and ``has_guide``): given on the CPU, as a
    data loader yields them, the step makes no host sync; on the device, it makes one (the
    copy of their ``> 0.5`` mask).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str,
        method: str = "gain",
        multilabel: bool = False,
        alpha: float | None = None,
        omega_e: float = 0.2,
        sigma: float = 0.5,
        omega: float = 10.0,
        second_order: bool = False,
        freeze_bn_am: bool = True,
        am_score: str = "auto",
        am_gradient: str = "network",
        am_fill: str = "zero",
        backend: str = "auto",
        guidance: str = "counterfactual",
        reshape_transform: ReshapeTransform | None = None,
        output: OutputSelector = None,
        counterfactuals: int | None = None,
        counterfactual_weight: float = 1.0,
        counterfactual_eta: float = 0.1,
        counterfactual_weight_max: float | None = 4.0,
        counterfactual_jitter: str = "colour",
        counterfactual_backgrounds: int = 0,
        rrr_scale: float | None = None,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if am_score not in AM_SCORES:
            raise ValueError(f"am_score must be one of {AM_SCORES}, got {am_score!r}")
        if am_gradient not in AM_GRADIENTS:
            raise ValueError(f"am_gradient must be one of {AM_GRADIENTS}, got {am_gradient!r}")
        if am_fill not in ERASE_FILLS:
            raise ValueError(f"am_fill must be one of {ERASE_FILLS}, got {am_fill!r}")
        if am_gradient == "attention" and isinstance(model, nn.DataParallel):
            raise ValueError(
                "am_gradient='attention' cannot score the erased images through nn.DataParallel (torch.func's "
                "functional_call refuses it): pass the module itself, or wrap the objective in "
                "DistributedDataParallel"
            )
        self.model = model
        self.target_layer = target_layer
        self.layer = resolve_layer(model, target_layer)
        self.method = method
        self.multilabel = multilabel
        self.alpha = ALPHA_BY_METHOD[method] if alpha is None else alpha
        self.omega_e, self.sigma, self.omega = omega_e, sigma, omega
        self.second_order = second_order
        self.freeze_bn_am = freeze_bn_am
        self.am_score = am_score
        self.am_gradient = am_gradient
        self.am_fill = am_fill
        self.backend = backend
        self.guidance = check_guidance(guidance)
        self.reshape_transform = reshape_transform
        self.output = output
        if counterfactuals is not None and counterfactuals < 0:
            raise ValueError(f"counterfactuals must be >= 0, got {counterfactuals}")
        self.counterfactuals = counterfactuals
        if counterfactual_backgrounds < 0:
            raise ValueError(f"counterfactual_backgrounds must be >= 0, got {counterfactual_backgrounds}")
        self.counterfactual_backgrounds = counterfactual_backgrounds
        if not counterfactual_weight > 0:
            raise ValueError(f"counterfactual_weight must be > 0, got {counterfactual_weight}")
        self.counterfactual_weight = counterfactual_weight
        if not counterfactual_eta >= 0:
            raise ValueError(f"counterfactual_eta must be >= 0, got {counterfactual_eta}")
        self.counterfactual_eta = counterfactual_eta
        bounded = counterfactual_eta > 0 and counterfactual_weight_max is not None
        if bounded and not counterfactual_weight_max >= counterfactual_weight:
            raise ValueError(
                f"counterfactual_weight_max ({counterfactual_weight_max}) is below counterfactual_weight "
                f"({counterfactual_weight}), where the group DRO starts: raise it (--counterfactual-weight-max), "
                "or fix the weight with counterfactual_eta=0 (--counterfactual-eta 0)"
            )
        self.counterfactual_weight_max = counterfactual_weight_max
        # log of the weight of a counterfactual image in L_cl; moves when counterfactual_eta > 0
        device = next(model.parameters(), torch.empty(0)).device
        self.register_buffer("counterfactual_log_weight", torch.tensor(math.log(counterfactual_weight), device=device))
        check_jitter(counterfactual_jitter)  # also when no bank is built: a wrong name is never ignored
        self.bank = (
            CounterfactualBank(jitter=counterfactual_jitter)
            if method == "gainext" and guidance == "counterfactual"
            else None
        )
        self.rrr_scale = rrr_scale
        self.graphs = _graphed_steps(self) if cuda_graph else None

    def forward(
        self,
        images: Tensor,
        labels: Tensor,
        guide: Tensor | None = None,
        has_guide: Tensor | None = None,
        mining: bool = True,
    ) -> GAINOutput:
        """Losses for a batch.

        Args:
            images: ``(B, 3, H, W)``.
            labels: ``(B, C)`` multi-hot ground truth (one-hot for single-label data).
            guide: ``(B, C, H, W)`` uint8 pixel guides (1 object, 0 background,
                255 ignore); needed for ``method="gainext"``.
            has_guide: ``(B,)`` bool, which samples carry a guide.
            mining: ``False`` computes L_cl only (e.g. a warm-up epoch). The attention streams
                are also skipped when both their weights are zero (``alpha == 0`` and, for
                ``gainext``, ``omega_e == 0``): L_am and L_e are then reported as 0; with
                ``alpha == 0`` alone, no erased image is built or scored (S_am is skipped, L_am
                reported as 0, ``erased`` and ``scores_am`` are ``None``). With
                ``guidance="counterfactual"`` the batch is extended with counterfactual images
                whenever guides are given (warm-up included); a call without guides and with
                ``mining=False`` (an evaluation batch) scores the batch alone.
        """
        if labels.dim() != 2 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be (B, C) multi-hot with B = {images.shape[0]}, got {tuple(labels.shape)}")
        num_batch = images.shape[0]
        counterfactual = None
        banked = self.bank is not None and (guide is not None or has_guide is not None)  # no: an evaluation batch
        if banked:
            _check_guides(guide, has_guide, labels, images)
            images, labels, guide, has_guide, counterfactual = self._add_counterfactuals(
                images, labels, guide, has_guide
            )
        plan = plan_pairs(labels, has_guide if self.method == "gainext" else None, images.device)
        labels = labels.to(images.device, non_blocking=True)
        weighted = self.alpha != 0 or (self.method == "gainext" and self.omega_e != 0)
        attend = mining and self.method != "baseline" and weighted and plan.num_pairs > 0
        if attend and not torch.is_grad_enabled():
            raise RuntimeError(
                "GAIN's attention streams differentiate the class scores (eq. 1), which needs gradients: call it "
                "with gradients enabled, or with mining=False for L_cl alone (e.g. under torch.no_grad)"
            )
        guided = attend and self.method == "gainext"
        if guided:
            _check_guides(guide, has_guide, labels, images)
            guide = guide.to(images.device, non_blocking=True)
        if self.graphs is not None:
            return self._graphed_step(images, labels, guide if guided else None, plan, attend)
        return self._step(images, labels, guide, plan, attend, num_batch, counterfactual, banked)

    def _step(
        self,
        images: Tensor,
        labels: Tensor,
        guide: Tensor | None,
        plan: PairPlan,
        attend: bool,
        num_batch: int,
        counterfactual: Tensor | None,
        banked: bool = False,
    ) -> GAINOutput:
        """The three streams on a planned batch (every tensor on the images' device): no host sync. ``banked``: a
        training batch of the counterfactual guidance, whose group-DRO step every rank takes, also one whose bank
        has drawn nothing yet (``counterfactual`` None): then with the batch's losses alone."""
        pair_index, pair_class = plan.index, plan.classes
        input_gradient = attend and self.method == "gainext" and self.guidance in INPUT_GRADIENT_GUIDANCES
        if input_gradient:
            images = images.detach().requires_grad_(True)  # rrr differentiates the scores w.r.t. the input
        with capture_output(self.layer) as captured, twice_differentiable(self.second_order or input_gradient):
            scores = select_scores(self.model(images), self.output)
        per_image = classification_losses(scores, labels, self.multilabel)
        if counterfactual is None:
            loss_cl = per_image.mean()
            if banked:  # the bank is still empty: no step here, but the other ranks' sums reach this rank
                self._counterfactual_weights(per_image.detach(), labels, num_batch)
        else:
            weights = self._counterfactual_weights(per_image.detach(), labels, num_batch)
            loss_cl = weighted_mean(per_image, weights)
        zero = loss_cl.new_zeros(())
        if not attend:
            return GAINOutput(
                loss_cl, loss_cl, zero, zero, scores[:num_batch], pair_index, pair_class, counterfactual=counterfactual
            )

        layer_out = captured.features
        transform = layer_transform(self.model, images, layer_out, self.reshape_transform)
        grads = class_gradients(
            scores, layer_out, pair_index, pair_class, create_graph=self.second_order, num_ranks=plan.num_ranks
        )
        features, grads = apply_transform(layer_out, transform), apply_transform(grads, transform)  # (., C, h, w)
        selected = features.index_select(0, pair_index)
        num_images = images.shape[0]
        scores_am, loss_am, erased = None, zero, None
        if self.alpha != 0:  # S_am (eq. 3-5)
            cam, erased = self._erase(selected, grads, images, pair_index)
            with frozen_bn_stats(self.model, self.freeze_bn_am):
                scores_am = select_scores(self._score_erased(erased), self.output)
            loss_am = attention_mining_loss(
                scores_am, pair_index, pair_class, num_images, self.am_score, self.multilabel
            )
        else:  # nothing reads erased images: the attention alone (eq. 1-2)
            cam = normalize_cam(gradcam_raw(selected, grads), (images.shape[-2], images.shape[-1]))
        loss_e = zero
        if self.method == "gainext":
            if self.guidance == "paper":
                loss_e = self._paper_guidance(cam, guide, plan, num_images)
            elif self.guidance in ("scaled", "counterfactual"):
                loss_e = self._scaled_guidance(features, grads, guide, plan, num_images)
            else:
                loss_e = self._guidance_variant(images, labels, scores, layer_out, transform, guide, plan, loss_cl)
        loss = loss_cl + self.alpha * loss_am
        if self.method == "gainext":
            loss = loss + self.omega_e * loss_e
        return GAINOutput(
            loss,
            loss_cl,
            loss_am,
            loss_e,
            scores[:num_batch],
            pair_index,
            pair_class,
            cam,
            erased,
            scores_am,
            counterfactual,
        )

    def _erase(self, features: Tensor, grads: Tensor, images: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """The attention-mining step (eq. 1-4) on the pairs. With ``am_fill="context"`` the backend erases
        ``I - F`` (one row per pair) and ``F`` is added back: ``I* = (I - F) - T * (I - F) + F = I - T * (I - F)``,
        with ``F`` from the same T, computed without a graph."""
        if self.am_fill == "zero":
            return attention_erase(features, grads, images, index, self.sigma, self.omega, self.backend)
        size = (images.shape[-2], images.shape[-1])
        source = images.index_select(0, index)
        with torch.no_grad():
            cam = normalize_cam(gradcam_raw(features, grads), size)
            kept = 1 - soft_mask(upsample(cam, size), self.sigma, self.omega).unsqueeze(1)
            fill = context_fill(source, kept)
        rows = torch.arange(index.numel(), device=index.device)
        cam, erased = attention_erase(features, grads, source - fill, rows, self.sigma, self.omega, self.backend)
        return cam, erased + fill

    def _score_erased(self, erased: Tensor) -> Any:
        """The model's output on the erased images (S_am); with ``am_gradient="attention"`` its weights are
        constants there, so the gradient of L_am reaches them only through ``erased``."""
        if self.am_gradient == "network":
            return self.model(erased)
        constants = {name: p.detach() for name, p in self.model.named_parameters()}
        return torch.func.functional_call(self.model, constants, (erased,), strict=False)

    def _graphed_step(
        self, images: Tensor, labels: Tensor, guide: Tensor | None, plan: PairPlan, attend: bool
    ) -> GAINOutput:
        """:meth:`_step` replayed from a CUDA graph (:mod:`gainx.losses.graphs`); only ``loss`` propagates gradients."""
        num_ranks, num_batch = plan.num_ranks, images.shape[0]

        def step(images: Tensor, labels: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
            index, classes, guided_pairs, guided_rows, *guide = rest
            planned = PairPlan(index, classes, num_ranks, guided_pairs, guided_rows)
            out = self._step(images, labels, guide[0] if guide else None, planned, attend, num_batch, None)
            kept = (out.loss_cl, out.loss_am, out.loss_e, out.scores, out.cam, out.erased, out.scores_am)
            return (out.loss, *(t.detach() for t in kept if t is not None))

        tensors = (images, labels, plan.index, plan.classes, plan.guided_pairs, plan.guided_rows)
        tensors += () if guide is None else (guide,)
        modes = (self.training, *(m.training for m in self.model.modules()))
        autocast = (torch.is_autocast_enabled(images.device.type), torch.get_autocast_dtype(images.device.type))
        key = (attend, num_ranks, modes, torch.is_grad_enabled(), autocast)
        loss, loss_cl, loss_am, loss_e, scores, *attention = self.graphs.run(key, step, tensors)
        return GAINOutput(loss, loss_cl, loss_am, loss_e, scores, plan.index, plan.classes, *attention)

    def _add_counterfactuals(
        self, images: Tensor, labels: Tensor, guide: Tensor, has_guide: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """Store the batch's annotated images in the bank and append the counterfactual images it draws
        (pasted objects, then object-free backgrounds)."""
        rows = has_guide.to(torch.bool)
        self.bank.add(images[rows], guide[rows], labels[rows])
        count = self.counterfactual_count(images.shape[0])
        drawn = [self.bank.draw(count), self.bank.draw_backgrounds(self.counterfactual_backgrounds)]
        drawn = [d for d in drawn if d is not None]
        if not drawn:
            return images, labels, guide, has_guide, None
        extra, extra_labels, extra_guide = (torch.cat(parts) for parts in zip(*drawn))
        flags = torch.ones(extra.shape[0], dtype=has_guide.dtype, device=has_guide.device)
        return (
            torch.cat([images, extra.to(images.dtype)]),
            torch.cat([labels, extra_labels.to(labels.dtype)]),
            torch.cat([guide, extra_guide]),
            torch.cat([has_guide, flags]),
            extra,
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """A state saved before the group DRO existed (no ``counterfactual_log_weight``) loads, strict or not,
        and keeps this objective's weight (where it starts, for a new one)."""
        key = prefix + "counterfactual_log_weight"
        if key not in state_dict:
            state_dict[key] = self.counterfactual_log_weight.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _counterfactual_weights(self, per_image: Tensor, labels: Tensor, num_batch: int) -> Tensor:
        """``(B + K,)`` weights of L_cl: 1 for the batch's images, ``exp(counterfactual_log_weight)`` for the
        counterfactual ones, after the group-DRO step on this step's losses (``counterfactual_eta > 0``; only
        while the model trains with gradients; the gap is taken over the pasted images, not the object-free
        backgrounds, whose uniform target is no measure of the context; on the device, no host sync):
        ``log w += eta (mean_cf l - mean_batch l)``, bounded by ``counterfactual_weight_max``; no pasted image:
        no step. Under ``torch.distributed`` the four sums the step needs are added over the ranks first (one
        all-reduce per step, which every rank joins after its model's forward, as SyncBatchNorm's): every rank
        takes the step of the global batch, where each would otherwise take its own and DDP would keep rank 0's."""
        if self.counterfactual_log_weight.device != per_image.device:  # a model moved after GAIN was built
            self.counterfactual_log_weight = self.counterfactual_log_weight.to(per_image.device)
        if self.counterfactual_eta > 0 and self.model.training and torch.is_grad_enabled():
            extra, batch = per_image[num_batch:], per_image[:num_batch]
            pasted = (labels[num_batch:].amax(dim=1) > 0.5).to(extra.dtype)  # object-free backgrounds have no class
            sums = torch.stack([(extra * pasted).sum(), pasted.sum(), batch.sum(), batch.new_full((), num_batch)])
            pasted_loss, count, batch_loss, batch_count = _sum_over_ranks(sums.float()).unbind()
            gap = pasted_loss / count.clamp_min(1) - batch_loss / batch_count.clamp_min(1)
            step = self.counterfactual_eta * gap * (count > 0)
            self.counterfactual_log_weight += step.to(self.counterfactual_log_weight.dtype)
            if self.counterfactual_weight_max is not None:
                self.counterfactual_log_weight.clamp_(max=math.log(self.counterfactual_weight_max))
        weights = torch.ones_like(per_image)
        weights[num_batch:] = self.counterfactual_log_weight.exp().to(per_image.dtype)
        return weights

    def counterfactual_count(self, batch_size: int) -> int:
        """Pasted images added to a batch of ``batch_size`` images: ``counterfactuals``, or ``ceil(B / 2)``
        when it is ``None``."""
        return -(-batch_size // 2) if self.counterfactuals is None else self.counterfactuals

    def _paper_guidance(self, cam: Tensor, guide: Tensor, plan: PairPlan, num_images: int) -> Tensor:
        """L_e (eq. 7) on the pairs whose image carries a guide (stream S_e)."""
        pairs = plan.guided_pairs
        if pairs.numel() == 0:
            return cam.new_zeros(())
        idx, cls = plan.index.index_select(0, pairs), plan.classes.index_select(0, pairs)
        maps = upsample(cam.index_select(0, pairs), (guide.shape[-2], guide.shape[-1]))
        return guidance_loss(maps, guide[idx, cls], idx, num_images)

    def _scaled_guidance(
        self, features: Tensor, grads: Tensor, guide: Tensor, plan: PairPlan, num_images: int
    ) -> Tensor:
        """eq. 7 on the signed evidence scaled by a constant (``guidance="scaled"``), on the guided pairs."""
        pairs = plan.guided_pairs
        if pairs.numel() == 0:
            return features.new_zeros(())
        idx, cls = plan.index.index_select(0, pairs), plan.classes.index_select(0, pairs)
        weights = grads.index_select(0, pairs).mean(dim=(2, 3), keepdim=True)
        evidence = (weights * features.index_select(0, idx)).sum(dim=1)
        maps = scaled_maps(evidence, (guide.shape[-2], guide.shape[-1]))
        return guidance_loss(maps, guide[idx, cls], idx, num_images)

    def _guidance_variant(
        self,
        images: Tensor,
        labels: Tensor,
        scores: Tensor,
        layer_out: Tensor,
        transform: ReshapeTransform | None,
        guide: Tensor,
        plan: PairPlan,
        loss_cl: Tensor,
    ) -> Tensor:
        """The non-paper guidance losses on the images that carry a guide (stream S_e)."""
        rows = plan.guided_rows
        if rows.numel() == 0:
            return scores.new_zeros(())
        rows_guide = guide.index_select(0, rows)
        if self.guidance in INPUT_GRADIENT_GUIDANCES:
            loss = rrr_loss(
                images, scores, rows, rows_guide, self.multilabel, each_class=self.guidance == "rrr_classes"
            )
            if self.rrr_scale is None and loss.item() > 0:
                self.rrr_scale = loss_cl.item() / loss.item()
            return loss * (self.rrr_scale or 1.0)
        evidence = class_evidence(scores, layer_out, rows, create_graph=self.second_order, transform=transform)
        loss = all_classes_loss if self.guidance == "all_classes" else signed_loss
        return loss(evidence, rows_guide, labels.index_select(0, rows))


def _sum_over_ranks(values: Tensor) -> Tensor:
    """``values`` added over the ranks of the default process group (as they are without one)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)
    return values


def _graphed_steps(gain: GAIN) -> GraphedSteps:
    """The captured steps of ``gain``, after checking that its step can be captured."""
    if gain.bank is not None:
        raise ValueError("cuda_graph=True cannot capture guidance='counterfactual': its bank draws on the host")
    if gain.method == "gainext" and gain.guidance in INPUT_GRADIENT_GUIDANCES and gain.rrr_scale is None:
        raise ValueError(
            f"cuda_graph=True with guidance={gain.guidance!r} needs rrr_scale (its calibration reads the host)"
        )
    return GraphedSteps(gain.model)


def _check_guides(guide: Tensor | None, has_guide: Tensor | None, labels: Tensor, images: Tensor) -> None:
    """Validate the pixel guides of a batch (the guided samples are planned by :func:`plan_pairs`)."""
    if guide is None or has_guide is None:
        raise ValueError("method='gainext' needs guide and has_guide")
    expected = (*labels.shape, *images.shape[-2:])
    if tuple(guide.shape) != expected:
        raise ValueError(f"guide must be (B, C, H, W) = {expected}, got {tuple(guide.shape)}")
