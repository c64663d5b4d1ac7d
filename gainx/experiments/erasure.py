"""Does a model read the object or the erasure? The attention-mining test of a checkpoint.

L_am (eq. 5) asks the score of class c to fall on the erased image ``I*_c = I - T(A_c) * I`` (eq. 3-4). A network
can meet it in two ways: its attention A_c covers the object, so that I*_c no longer shows it (the paper's aim),
or it learns that an erased region itself means "not c", wherever the region lies. The two are told apart by
scoring each (image, ground-truth class) pair of a split with masks, as L_am reads the score (the probability of
class c, :func:`gainx.losses.terms.am_class_score`), on six inputs:

* ``image``: the image as it is;
* ``own``: erased by its own soft mask ``T(A_c)`` (eq. 4, with the run's sigma, omega and fill,
  :func:`gainx.ops.erase`): what L_am sees;
* ``moved``: erased (the same way) by that mask moved off the objects: rolled by half the image in both axes,
  and zero on every object pixel (no object is erased);
* ``object``: erased to zero (eq. 3) by the mask of class c's objects, whatever the attention;
* ``object_margin``: erased to zero by that mask grown by a margin of 1/16 of the image side: the object and
  its outline;
* ``object_context``: erased by the objects' mask and filled in from the pixels around them
  (``fill="context"``): the object gone with its outline.

A model that reads the object keeps ``moved`` near ``image``; one that reads the erasure loses score on
``moved`` as on ``own``. Where ``object`` stays near ``image`` and ``object_margin`` and ``object_context`` do
not, the erased object's silhouette still shows its class: with eq. 3's zero fill a map that covers the object
exactly does not minimize L_am, one that also covers its outline does; with the context fill one that covers the
object does. ``area_own`` and ``area_moved`` are the mean fractions of the image the two soft
masks erase.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from gainx.attention import attention_maps
from gainx.data import load_split_for_model
from gainx.losses.terms import am_class_score
from gainx.models import load_model
from gainx.ops import erase, soft_mask

INPUTS = ("image", "own", "moved", "object", "object_margin", "object_context")
FIELDS = (*INPUTS, "area_own", "area_moved")


def moved_off_objects(mask: Tensor, objects: Tensor) -> Tensor:
    """``(P, H, W)`` masks rolled by half their size in both axes, zero where ``objects`` (``(P, H, W)``, 1 on
    every object pixel) is set: an erasure of the same shape that leaves every object whole."""
    height, width = mask.shape[-2:]
    return torch.roll(mask, shifts=(height // 2, width // 2), dims=(-2, -1)) * (1 - objects)


def with_margin(mask: Tensor) -> Tensor:
    """``(P, H, W)`` binary masks grown by ``max(H, W) // 16`` pixels on every side (a square dilation)."""
    margin = max(mask.shape[-2:]) // 16
    return F.max_pool2d(mask.unsqueeze(1), 2 * margin + 1, stride=1, padding=margin).squeeze(1)


def _class_probability(model: nn.Module, images: Tensor, classes: Tensor, multilabel: bool) -> Tensor:
    with torch.no_grad():
        return am_class_score(model(images), classes, "auto", multilabel)


def erasure_scores(
    checkpoint: str | Path, data: str | Path, split: str, batch_size: int = 64, max_pairs: int | None = None
) -> dict[str, Any]:
    """Mean probability of the ground-truth class on the five inputs of the module docstring, and the
    erased areas, over the (image, ground-truth class) pairs of ``split`` whose image carries a mask
    (at most ``max_pairs``, in order)."""
    model, meta = load_model(checkpoint)
    config = meta.get("config", {})
    sigma, omega = float(config.get("sigma", 0.5)), float(config.get("omega", 10.0))
    fill = str(config.get("am_fill", "zero"))
    multilabel = bool(meta.get("multilabel", False))
    dataset = load_split_for_model(data, split, meta)
    sums = torch.zeros(len(FIELDS), dtype=torch.float64)
    count = 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        labels = batch["labels"] * batch["has_guide"].bool().unsqueeze(1)
        image, cls = torch.nonzero(labels > 0.5, as_tuple=True)
        if max_pairs is not None:
            image, cls = image[: max_pairs - count], cls[: max_pairs - count]
        if image.numel() == 0:
            continue
        images, guide = batch["image"][image], batch["guide"][image]
        _, maps = attention_maps(model, images, meta["target_layer"], classes=cls.unsqueeze(1))
        own = soft_mask(maps[:, 0], sigma, omega)
        objects = (guide != 0).any(dim=1).to(own.dtype)  # 255 (ignore) counts as object: never erased by `moved`
        moved = moved_off_objects(own, objects)
        of_class = (guide[torch.arange(cls.numel()), cls] == 1).to(own.dtype)
        inputs = (
            images,
            erase(images, own, fill),
            erase(images, moved, fill),
            erase(images, of_class),
            erase(images, with_margin(of_class)),
            erase(images, of_class, "context"),
        )
        scores = [_class_probability(model, x, cls, multilabel).double() for x in inputs]
        areas = [m.flatten(1).mean(1).double() for m in (own, moved)]
        sums += torch.stack([s.sum() for s in (*scores, *areas)])
        count += cls.numel()
        if max_pairs is not None and count >= max_pairs:
            break
    if count == 0:
        raise ValueError(f"split {split!r} of {data} has no labelled images with masks")
    return {**{name: float(v / count) for name, v in zip(FIELDS, sums, strict=True)}, "num_pairs": count}
