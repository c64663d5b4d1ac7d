"""Evaluate a classifier and its attention on a data split."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from gainx.attention import attention_maps
from gainx.evaluation.metrics import LocalizationMeter, mean_average_precision


def evaluate(
    model: nn.Module,
    dataset: Any,
    target_layer: str,
    batch_size: int = 64,
    localization: bool = True,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Accuracy (single-label) or mAP (multi-label), and attention localization
    (cue mIoU, pointing game) on the samples that carry guides, using the
    maps of each ground-truth class.

    The model is put in eval mode.
    """
    device = device or next(model.parameters()).device
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    meter = LocalizationMeter(len(dataset.classes))
    all_scores, all_labels = [], []
    for batch in loader:
        images = batch["image"].to(device)
        labels = batch["labels"].to(device)
        guided = batch["has_guide"].to(device).bool()
        if localization and guided.any():
            scores = _guided_localization(model, images, labels, batch["guide"].to(device), guided, target_layer, meter)
        else:
            with torch.no_grad():
                scores = model(images)
        all_scores.append(scores.cpu())
        all_labels.append(labels.cpu())
    scores, labels = torch.cat(all_scores), torch.cat(all_labels)
    report: dict[str, Any] = {"num_images": len(dataset)}
    if dataset.multilabel:
        report["metric"] = "mAP"
        report["mAP"] = mean_average_precision(scores, labels)
    else:
        report["metric"] = "accuracy"
        report["accuracy"] = labels.gather(1, scores.argmax(1, keepdim=True)).gt(0.5).float().mean().item()
    if localization:
        report["localization"] = meter.result()
    return report


def _guided_localization(model, images, labels, guide, guided, target_layer, meter) -> torch.Tensor:
    """Scores of the whole batch plus meter updates for the ground-truth maps of the guided samples.

    Each (image, ground-truth class) pair is explained on its own copy of the
    image, so images with different numbers of classes need no padding.
    """
    with torch.no_grad():
        scores = model(images)
    idx = torch.nonzero(guided).squeeze(1)
    pair_img, pair_cls = torch.nonzero(labels[idx] > 0.5, as_tuple=True)
    if pair_img.numel():
        rows = idx[pair_img]
        _, maps = attention_maps(model, images[rows], target_layer, classes=pair_cls.unsqueeze(1))
        meter.update(maps[:, 0], guide[rows, pair_cls], pair_cls)
    return scores
