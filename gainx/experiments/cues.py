"""Localization cues as PNG label maps, and their mIoU against masks.

A cue label map follows the mask convention of docs/data.md: ``k + 1`` where
the attention map of ground-truth class k passes the paper's cue rule (at
least 20% of the map's maximum, :func:`gainx.evaluation.cue_mask`) and no other
ground-truth class's does, ``0`` (background) where none does, and ``255``
(ignore) where two or more classes conflict. :func:`write_cues` also writes a
``manifest.csv`` that lists the original images with the cues as masks, so the
cue folder is itself a data set for a weakly supervised segmentation trainer. Its
image paths are relative to the cue folder and lead out of it (``../data/...``),
so it loads with ``load_dataset(cue_dir, split, allow_outside_root=True)``
(command line: ``--allow-outside-root``), as long as neither folder moves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from gainx.attention import attention_maps
from gainx.data import load_dataset, load_split_for_model
from gainx.data.load import GUIDED_LAYOUTS, dataset_layout
from gainx.data.manifest import write_manifest
from gainx.data.records import IGNORE
from gainx.evaluation import cue_mask
from gainx.io import atomic_open
from gainx.models import load_model


def cue_label_map(maps: Tensor, classes: Tensor) -> np.ndarray:
    """``(K, H, W)`` maps of the classes ``classes (K,)`` -> ``(H, W)`` uint8 cue label map."""
    if maps.dim() != 3 or classes.shape != (maps.shape[0],):
        raise ValueError(
            f"maps must be (K, H, W) with one class id each, got {tuple(maps.shape)} and {tuple(classes.shape)}"
        )
    passes = cue_mask(maps)
    count = passes.sum(0)
    winner = classes.to(torch.long)[passes.to(torch.uint8).argmax(0)] + 1
    out = torch.where(count == 1, winner, torch.zeros_like(winner))
    out = torch.where(count > 1, torch.full_like(winner, IGNORE), out)
    return out.to(torch.uint8).cpu().numpy()


def write_cues(
    checkpoint: str | Path,
    data: str | Path,
    split: str,
    out: str | Path,
    batch_size: int = 64,
    *,
    model: str | None = None,
    trust_model_code: bool = False,
    allow_outside_root: bool = False,
) -> Path:
    """Write one cue PNG per image of ``split`` (at the image's stored size) and a manifest; returns ``out``.

    ``model`` and ``trust_model_code`` allow rebuilding a checkpoint whose model spec is not stock, as in
    :func:`gainx.models.load_model`; ``allow_outside_root`` as in :func:`gainx.data.load_dataset`. The cues
    need the images and their labels only, so no guides (masks, boxes) of ``data`` are read.
    """
    net, meta = load_model(checkpoint, model=model, trust_model_code=trust_model_code)
    guide = "none" if dataset_layout(data) in GUIDED_LAYOUTS else None
    dataset = load_split_for_model(data, split, meta, guide=guide, allow_outside_root=allow_outside_root)
    if list(dataset.classes) != list(meta["classes"]):
        raise ValueError(f"{data}: classes {dataset.classes} differ from the checkpoint's {meta['classes']}")
    out = Path(out)
    (out / split).mkdir(parents=True, exist_ok=True)
    stems = [Path(s.image).stem for s in dataset.samples]
    if len(set(stems)) != len(stems):
        raise ValueError(f"{data}: split {split!r} has image files with the same name; cue files would collide")
    rows = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([b["image"] for b in items])
        labels = torch.stack([b["labels"] for b in items])
        pair_img, pair_cls = torch.nonzero(labels > 0.5, as_tuple=True)
        maps = (
            attention_maps(net, images[pair_img], meta["target_layer"], classes=pair_cls.unsqueeze(1))[1][:, 0]
            if pair_img.numel()
            else None
        )
        for j, item in enumerate(items):
            sample = dataset.samples[item["index"]]
            with Image.open(sample.image) as im:
                width, height = im.size
            sel = torch.nonzero(pair_img == j).squeeze(1)
            if maps is None or sel.numel() == 0:
                label_map = np.zeros((height, width), dtype=np.uint8)
            else:
                own = F.interpolate(maps[sel].unsqueeze(0), size=(height, width), mode="bilinear", align_corners=False)[
                    0
                ]
                label_map = cue_label_map(own, pair_cls[sel])
            name = f"{split}/{Path(sample.image).stem}.png"
            with atomic_open(out / name, "wb") as fh:
                Image.fromarray(label_map, mode="L").save(fh, format="PNG")
            names = ";".join(dataset.classes[c] for c in sample.labels)
            rows.append((os.path.relpath(sample.image, out), names, split, name))
    meta_out = {
        "image_size": list(meta["image_size"]),
        "cues": {"checkpoint": str(checkpoint), "data": str(data), "split": split},
    }
    return write_manifest(out, rows, dataset.classes, meta_out)


def label_map_of(guide: Tensor) -> Tensor:
    """``(K, H, W)`` uint8 guide -> ``(H, W)`` label map (k+1 class, 0 background, 255 ignore)."""
    is_class = guide == 1
    lm = torch.where(
        is_class.any(0), is_class.to(torch.uint8).argmax(0) + 1, torch.zeros_like(guide[0], dtype=torch.long)
    )
    return torch.where((guide == IGNORE).all(0), torch.full_like(lm, IGNORE), lm).to(torch.uint8)


def evaluate_cues(
    cues: str | Path, data: str | Path, split: str, *, allow_outside_root: bool = False
) -> dict[str, Any]:
    """mIoU of a cue folder (from :func:`write_cues`) against the masks of ``data``'s ``split``
    (``allow_outside_root`` as in :func:`gainx.data.load_dataset`).

    Classes are background + the data set's classes. Pixels ignored in the
    ground truth do not count; a conflict pixel (255 in the cue) counts as a
    miss for its ground-truth class. ``miou`` averages the classes present in
    the ground truth or the cues (background included), ``miou_fg`` the
    foreground ones. Only images with a mask are scored; a missing cue file is
    an error naming it.
    """
    cues, data = Path(cues), Path(data)
    truth = load_dataset(data, split, allow_outside_root=allow_outside_root)
    k = len(truth.classes)
    conf = np.zeros((k + 1, k + 2), dtype=np.int64)  # rows: truth 0..k; cols: cue 0..k, conflict
    scored = 0
    for i, sample in enumerate(truth.samples):
        if sample.mask is None:
            continue
        path = cues / split / f"{Path(sample.image).stem}.png"
        if not path.is_file():
            raise FileNotFoundError(f"cue not found: {path} (for image {sample.image})")
        gt = label_map_of(truth[i]["guide"]).numpy()
        with Image.open(path) as im:
            cue = np.asarray(im.resize(gt.shape[::-1], Image.NEAREST))
        bad = set(np.unique(cue).tolist()) - set(range(k + 1)) - {IGNORE}
        if cue.ndim != 2 or bad:
            raise ValueError(
                f"cue {path} is not a label map over {k} classes (shape {cue.shape}, values {sorted(bad)})"
            )
        valid = gt != IGNORE
        cols = np.where(cue == IGNORE, k + 1, cue)[valid].astype(np.int64)
        np.add.at(conf, (gt[valid].astype(np.int64), cols), 1)
        scored += 1
    if scored == 0:
        raise ValueError(f"split {split!r} of {data} has no masks to score the cues against")
    inter = np.diag(conf[:, : k + 1]).astype(np.float64)
    union = conf.sum(1) + conf[:, : k + 1].sum(0) - inter
    present = union > 0
    iou = np.where(present, inter / np.maximum(union, 1), np.nan)
    names = ["background", *truth.classes]
    return {
        "miou": float(np.nanmean(iou)),
        "miou_fg": float(np.nanmean(iou[1:])) if present[1:].any() else float("nan"),
        "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou, strict=True)},
        "conflict_fraction": float(conf[:, k + 1].sum() / max(conf.sum(), 1)),
        "num_images": scored,
    }
