"""Annotation-budget variants of a fully annotated benchmark.

A benchmark is generated once per seed with a mask on every training image
(``base``). A variant is a second manifest, ``base/variants/<kind>-<budget>/``,
listing the same images (paths relative to it; other splits without annotation) where only the first
``round(budget * N)`` images of a fixed permutation keep their annotation, as
a mask or as the boxes around each class's mask pixels. The subsets are
nested (1% is inside 2% is inside 5%), so budgets differ only in how much is
annotated, never in which images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gainx.data.decode import read_mask
from gainx.data.manifest import CLASSES, MANIFEST, META, read_classes, read_rows, write_manifest

KINDS = ("none", "masks", "boxes")


def boxes_from_label_map(label_map: np.ndarray, class_names: list[str]) -> str:
    """Manifest ``boxes`` text: one box around the pixels of each class in the label map."""
    items = []
    for value in sorted(set(np.unique(label_map).tolist()) - {0, 255}):
        ys, xs = np.nonzero(label_map == value)
        items.append(f"{class_names[value - 1]}:{xs.min()} {ys.min()} {xs.max() + 1} {ys.max() + 1}")
    return ";".join(items)


def write_variant(base: str | Path, kind: str, budget: float, seed: int, split: str = "train") -> Path:
    """Write (or reuse) the ``kind`` variant of ``base`` at ``budget``; returns its folder."""
    if kind not in KINDS:
        raise ValueError(f"annotation kind must be one of {KINDS}, got {kind!r}")
    base = Path(base)
    out = base / "variants" / (kind if kind == "none" else f"{kind}-{budget:g}")
    if (out / MANIFEST).exists():
        return out
    everything = [row for _, row in read_rows(base / MANIFEST)]
    rows = [r for r in everything if r["split"] == split]
    unmasked = [r["path"] for r in rows if not r.get("mask")]
    if kind != "none" and unmasked:
        raise ValueError(
            f"{base / MANIFEST}: {len(unmasked)} {split} images have no mask (e.g. {unmasked[0]}); "
            "budget variants need a fully annotated base"
        )
    classes = read_classes(base / CLASSES)
    order = np.random.default_rng(seed).permutation(len(rows))
    keep = set(order[: round(budget * len(rows))].tolist()) if kind != "none" else set()
    out.mkdir(parents=True, exist_ok=True)
    table = []
    for i, r in enumerate(rows):
        mask = _relative(base, r["mask"], out) if i in keep and kind == "masks" else ""
        boxes = (
            boxes_from_label_map(read_mask(base / r["mask"], str(base / MANIFEST)), classes)
            if i in keep and kind == "boxes"
            else ""
        )
        table.append((_relative(base, r["path"], out), r["labels"], r["split"], mask, boxes))
    # the other splits, unannotated: they keep the manifest's multi-label status that of the base
    table += [
        (_relative(base, r["path"], out), r["labels"], r["split"], "", "") for r in everything if r["split"] != split
    ]
    meta = json.loads((base / META).read_text(encoding="utf-8"))
    meta["variant"] = {"kind": kind, "budget": budget, "annotated": len(keep), "of": len(rows)}
    return write_manifest(out, table, classes, meta, columns=("path", "labels", "split", "mask", "boxes"))


def _relative(base: Path, path: str, out: Path) -> str:
    """``base / path`` relative to the variant folder ``out`` (manifest paths are relative to their folder)."""
    return os.path.relpath(base / path, out)
