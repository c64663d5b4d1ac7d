"""Classification and attention-localization metrics.

* accuracy (single-label top-1) and mAP (multi-label, mean over classes of
  average precision, scikit-learn's definition);
* cue mIoU: the paper's localization cue keeps the pixels whose attention is
  at least 20% of the map's maximum; intersection and union with the class's
  mask are accumulated per class over the data set and averaged over classes;
* pointing game: a hit when the map's maximum falls on the class's mask.

A map whose target has no object pixel (all background or ignore: a present
class with nothing to localize) enters neither score; it is counted apart.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch import Tensor

from gainx.data.records import IGNORE

CUE_THRESHOLD = 0.2


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class, ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds
    (scikit-learn's ``average_precision_score``): tied scores form one threshold, so the value does
    not depend on the order of the tied images. NaN when the class has no positive."""
    hits = np.asarray(targets) > 0.5
    if not hits.any():
        return float("nan")
    return float(average_precision_score(hits, np.asarray(scores)))


def mean_average_precision(scores: Tensor, labels: Tensor) -> float:
    """mAP over the classes that have at least one positive."""
    s, t = scores.float().cpu().numpy(), labels.float().cpu().numpy()
    aps = [average_precision(s[:, c], t[:, c]) for c in range(s.shape[1])]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def cue_mask(maps: Tensor, threshold: float = CUE_THRESHOLD) -> Tensor:
    """Pixels with attention >= ``threshold`` x the map's maximum (empty for an all-zero map)."""
    peak = maps.flatten(-2).amax(-1)[..., None, None]
    return (maps >= threshold * peak) & (peak > 0)


class LocalizationMeter:
    """Accumulates cue IoU per class and pointing-game hits over many maps."""

    def __init__(self, num_classes: int, threshold: float = CUE_THRESHOLD) -> None:
        self.inter = torch.zeros(num_classes, dtype=torch.float64)
        self.union = torch.zeros(num_classes, dtype=torch.float64)
        self.hits = 0
        self.count = 0
        self.without_object = 0
        self.threshold = threshold

    def update(self, maps: Tensor, targets: Tensor, classes: Tensor) -> None:
        """``maps`` (P, H, W) in [0, 1]; ``targets`` (P, H, W) uint8 guides; ``classes`` (P,)."""
        valid = targets != IGNORE
        gt = (targets == 1) & valid
        scorable = gt.flatten(1).any(1)
        self.without_object += int((~scorable).sum())
        maps, valid, gt = maps[scorable], valid[scorable], gt[scorable]
        classes = classes[scorable.to(classes.device)]
        cue = cue_mask(maps, self.threshold) & valid
        inter = (cue & gt).flatten(1).sum(1).double().cpu()
        union = (cue | gt).flatten(1).sum(1).double().cpu()
        cls = classes.cpu()
        self.inter.index_add_(0, cls, inter)
        self.union.index_add_(0, cls, union)
        peak = maps.flatten(1).argmax(1)
        self.hits += int(gt.flatten(1).gather(1, peak.unsqueeze(1)).sum())
        self.count += maps.shape[0]

    def result(self) -> dict[str, float]:
        seen = self.union > 0
        miou = (self.inter[seen] / self.union[seen]).mean().item() if seen.any() else float("nan")
        return {
            "miou": miou,
            "pointing_game": self.hits / self.count if self.count else float("nan"),
            "num_maps": self.count,
            "num_maps_without_object": self.without_object,
        }
