"""Where do the logits come from? Signed evidence on the object versus the background.

For a GAP + linear head, the signed Grad-CAM evidence ``E_c = sum_k w_k^c f_k``
(eq. 1-2 without the ReLU) decomposes the logit exactly:
``sum_xy E_c(x, y) = s_c - b_c``. Upsampled to the image and split by the
ground-truth mask, it says how much of each logit the object and the
background contribute,
``C_c(R) = (h w / H W) sum_{(x, y) in R} up(E_c)(x, y)``
(``C_c(object) + C_c(background) = s_c - b_c`` up to interpolation at the
border). Grad-CAM shows only ``ReLU(E_gt)``: a background that *lowers* the
ground-truth logit or *raises* another class's is invisible in its map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from gainx.attention import attention_maps, class_evidence
from gainx.attention.capture import capture_output, resolve_layer
from gainx.data import load_split_for_model
from gainx.losses.guidance import background
from gainx.models import load_model
from gainx.ops import upsample

FIELDS = ("gt_object", "gt_background", "other_object", "other_background")


def evidence_split(checkpoint: str | Path, data: str | Path, split: str, batch_size: int = 64) -> dict[str, Any]:
    """Mean contributions to the ground-truth logit and to the strongest other class's logit,
    from the object (mask) and from the background, over the single-label images of ``split``
    that carry a mask; plus how often the background's net evidence favours the other class."""
    model, meta = load_model(checkpoint)
    dataset = load_split_for_model(data, split, meta)
    layer = resolve_layer(model, meta["target_layer"])
    sums = torch.zeros(len(FIELDS), dtype=torch.float64)
    favours_other, count = 0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        keep = batch["has_guide"].bool() & (batch["labels"].sum(1) == 1)
        if not keep.any():
            continue
        images, labels, guide = batch["image"][keep], batch["labels"][keep], batch["guide"][keep]
        with torch.enable_grad(), capture_output(layer) as captured:
            scores = model(images)
            rows = torch.arange(images.shape[0])
            ev = class_evidence(scores, captured.features, rows, create_graph=False).detach()
        scale = ev.shape[-2] * ev.shape[-1] / (images.shape[-2] * images.shape[-1])
        up = upsample(ev, (images.shape[-2], images.shape[-1])) * scale
        gt = labels.argmax(1)
        other = scores.detach().masked_fill(labels > 0.5, float("-inf")).argmax(1)
        bg = background(guide).to(up.dtype)
        obj = (guide == 1).any(1).to(up.dtype)
        at_gt, at_other = up[rows, gt], up[rows, other]
        parts = [at_gt * obj, at_gt * bg, at_other * obj, at_other * bg]
        values = torch.stack([p.flatten(1).sum(1) for p in parts], dim=1).double()
        sums += values.sum(0)
        favours_other += int((values[:, 3] > values[:, 1]).sum())
        count += images.shape[0]
    if count == 0:
        raise ValueError(f"split {split!r} of {data} has no single-label images with masks")
    report: dict[str, Any] = {name: float(v / count) for name, v in zip(FIELDS, sums, strict=True)}
    report["background_favours_other"] = favours_other / count
    report["num_images"] = count
    return report


def blank_map_fraction(checkpoint: str | Path, data: str | Path, split: str, batch_size: int = 64) -> float:
    """Fraction of (image, ground-truth class) pairs of ``split`` whose Grad-CAM map is zero everywhere:
    the class has no positive evidence ``ReLU(E_c)`` at any location (eq. 2)."""
    model, meta = load_model(checkpoint)
    dataset = load_split_for_model(data, split, meta)
    blank, count = 0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        pair_img, pair_cls = torch.nonzero(batch["labels"] > 0.5, as_tuple=True)
        if pair_img.numel() == 0:
            continue
        _, maps = attention_maps(model, batch["image"][pair_img], meta["target_layer"], classes=pair_cls.unsqueeze(1))
        blank += int((maps.flatten(1).amax(1) == 0).sum())
        count += pair_img.numel()
    if count == 0:
        raise ValueError(f"split {split!r} of {data} has no labelled images")
    return blank / count
