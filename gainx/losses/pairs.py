"""The (image, ground-truth class) pairs of a batch, worked out on the host.

The pairs decide the shapes of a GAIN step (P erased images, one Grad-CAM pass per
rank, the guided pairs of L_e), so their count must be known on the host. They are
read from the labels (and the guide flags) where the data loader made them: labels
on the CPU cost no wait for the device, labels on an accelerator cost one copy of
their ``> 0.5`` mask to the host. Everything after this plan runs on fixed shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class PairPlan:
    """Where the pairs of a batch are.

    Pair p is ``(index[p], classes[p])`` for every ``labels[i, c] > 0.5``, in row-major
    order (sorted by image, then class); its rank is its position among the pairs of its
    image. Tensors are int64 on the step's device.
    """

    index: Tensor  # (P,) image of each pair
    classes: Tensor  # (P,) class of each pair
    num_ranks: int  # most pairs of one image: the Grad-CAM passes
    guided_pairs: Tensor  # (Pg,) positions of the pairs whose image carries a guide
    guided_rows: Tensor  # (G,) images that carry a guide

    @property
    def num_pairs(self) -> int:
        return self.index.numel()


def plan_pairs(labels: Tensor, guided: Tensor | None, device: torch.device) -> PairPlan:
    """The :class:`PairPlan` of ``labels`` ``(B, C)`` and the ``(B,)`` bool ``guided`` flags (``None``: none).

    The host copy is one transfer of the thresholded labels and flags (none when they are
    on the CPU); the plan goes back to ``device`` in one non-blocking copy.
    """
    flags = labels > 0.5
    if guided is not None:
        if tuple(guided.shape) != (labels.shape[0],):
            raise ValueError(f"has_guide must be ({labels.shape[0]},), one flag per image, got {tuple(guided.shape)}")
        flags = torch.cat([flags, guided.to(device=flags.device, dtype=torch.bool).unsqueeze(1)], dim=1)
    host = flags.cpu().numpy()
    mask, rows_guided = host[:, : labels.shape[1]], host[:, labels.shape[1] :].any(axis=1)
    index, classes = np.nonzero(mask)
    counts = mask.sum(axis=1)
    guided_pairs = np.flatnonzero(rows_guided[index])
    guided_rows = np.flatnonzero(rows_guided)
    parts = [index, classes, guided_pairs, guided_rows]
    packed = torch.from_numpy(np.concatenate(parts).astype(np.int64))
    if device.type == "cuda":
        packed = packed.pin_memory()  # a page-locked source: the copy below does not wait
    packed = packed.to(device, non_blocking=True)
    index_t, classes_t, pairs_t, rows_t = packed.split([len(p) for p in parts])
    return PairPlan(index_t, classes_t, int(counts.max(initial=0)), pairs_t, rows_t)
