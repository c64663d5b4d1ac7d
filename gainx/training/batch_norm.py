"""Batch-norm statistics recomputed with the trained weights ("precise BN").

A batch-norm layer normalizes with the batch's statistics in training and with its running averages at test time.
The averages are exponential (``running = (1 - m) running + m batch``), so after ``n`` steps ``(1 - m)^n`` of
them is still the statistics they started from. A network fine-tuned from ImageNet weights starts from ImageNet's
statistics, and its momentum may be small: EfficientNet's is TensorFlow's 0.01, so after 128 steps (8 epochs of
1000 images at batch 64) 0.99^128 = 28% of each average is still ImageNet's, and the rest lags behind weights that
moved every step. The test-time network then differs from the trained one (docs/experiments.md, "Batch-norm
statistics and input normalization" in the fine-tuned section, measures how much).

:func:`recompute_batch_norm_statistics` replaces every running average by the mean over the training images of the
batch statistics the final weights produce (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", sec. 3; fvcore's
``PreciseBN``). Only the running buffers change: training itself normalizes with batch statistics and never reads
them, so the weights are those of a run without it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

BN_STATISTICS = ("auto", "recompute", "running")  # TrainConfig.bn_statistics
MAX_BATCHES = 200  # fvcore's PreciseBN default: enough for the mean of the batch statistics to settle


def recomputes_statistics(bn_statistics: str, weights: str | None) -> bool:
    """Whether a run recomputes its batch-norm statistics: ``recompute``, or ``auto`` when it fine-tunes
    from ``weights`` (the running averages then start from another data set's statistics)."""
    if bn_statistics not in BN_STATISTICS:
        raise ValueError(f"bn_statistics must be one of {BN_STATISTICS}, got {bn_statistics!r}")
    return bn_statistics == "recompute" or (bn_statistics == "auto" and weights is not None)


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batch_norm_statistics(
    model: nn.Module, images: Iterable[torch.Tensor], max_batches: int = MAX_BATCHES
) -> int:
    """Set each batch-norm layer's running mean and variance to the mean, over the first ``max_batches`` batches of
    ``images``, of the batch mean and (unbiased) batch variance the layer sees; return the number of batches.

    The whole model runs in train mode, as in ``torch.optim.swa_utils.update_bn`` and fvcore's ``PreciseBN``: each
    layer sees the activations it normalized in training (dropout and drop-connect included), the ones the layers
    after it were trained on. The layers' momenta and every module's train/eval mode are restored; a model without
    batch norm is left untouched. Random layers draw from torch's generator: the caller keeps its state if it
    must (:meth:`gainx.training.trainer.Trainer.recompute_statistics` does).
    """
    if max_batches < 1:
        raise ValueError(f"max_batches must be at least 1, got {max_batches}")
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [m.momentum for m in layers]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    model.train()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: the mean over the batches seen
    count = 0
    try:
        device = next(model.parameters()).device
        for batch in images:
            if count == max_batches:
                break
            model(batch.to(device))
            count += 1
        if count == 0:
            raise ValueError("recomputing batch-norm statistics needs at least one batch of images; got none")
    except BaseException:  # keep the statistics the model had, not a partial average
        for m, (mean, var, tracked) in zip(layers, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
        raise
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, training in modes:
            m.training = training
    return count
