"""Shapes-on-clutter benchmark for attention localization.

Each image holds one or two objects of distinct classes (:data:`SHAPES`) of
varied size (25-65% of the canvas) and random colour, on clutter: coloured
noise, random line segments and small blobs in random colours. A later object
may occlude an earlier one; the label map records the visible pixels (value
``class + 1``, 0 background), so masks and boxes describe what can be seen.

Splits: ``train`` (image-level labels; a ``mask_fraction`` of the images carry
their label map, for GAINext) and ``test`` (every image carries its label map,
for evaluation only). Written as a CSV manifest (docs/data.md, layout (b)),
deterministic for a seed; multi-label (soft-margin loss).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gainx.data.manifest import write_manifest
from gainx.data.synthetic.generator import SHAPES, bright_color, masked_subset, save_png, shape_mask, start_dataset

TWO_OBJECT_PROB = 0.35
MIN_VISIBLE = 0.4  # an occluded object keeps at least this fraction of its pixels
SIZE_RANGE = (0.25, 0.65)


def write_shapes(
    out: str | Path,
    image_size: int = 32,
    seed: int = 0,
    mask_fraction: float = 0.05,
    train_size: int = 1500,
    test_size: int = 300,
) -> Path:
    """Write the shapes-on-clutter benchmark to ``out`` and return ``out``."""
    out = start_dataset(out, image_size, train_size, test_size, mask_fraction)
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, str, str]] = []
    masked = masked_subset(rng, train_size, mask_fraction)
    for split, n, keep in (("train", train_size, masked), ("test", test_size, set(range(test_size)))):
        (out / split).mkdir(exist_ok=True)
        for i in range(n):
            image, label_map, labels = render_scene(rng, image_size)
            name = f"{split}/{i:06d}"
            save_png(image, out / f"{name}.png")
            mask = ""
            if i in keep:
                mask = f"{name}_mask.png"
                save_png(label_map, out / mask)
            rows.append((f"{name}.png", ";".join(SHAPES[c] for c in sorted(labels)), split, mask))
    meta = {
        "name": "shapes-clutter",
        "image_size": image_size,
        "seed": seed,
        "generator": {
            "mask_fraction": mask_fraction,
            "train_size": train_size,
            "test_size": test_size,
            "train_masked": len(masked),
            "two_object_prob": TWO_OBJECT_PROB,
            "size_range": list(SIZE_RANGE),
        },
    }
    return write_manifest(out, rows, SHAPES, meta)


def clutter(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)`` float background: noise, line segments and small blobs."""
    canvas = rng.normal(45.0, 12.0, size=(size, size, 3)).clip(0, 110)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(rng.integers(3, 7)):
        y0, x0, y1, x1 = rng.uniform(0, size, size=4)
        t = np.linspace(0.0, 1.0, 2 * size)
        ys, xs = np.round(y0 + t * (y1 - y0)).astype(int), np.round(x0 + t * (x1 - x0)).astype(int)
        ok = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
        canvas[ys[ok], xs[ok]] = 0.7 * bright_color(rng)
    for _ in range(rng.integers(2, 5)):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1.0, size / 14 + 1.0)
        canvas[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 0.7 * bright_color(rng)
    return canvas


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, set[int]]:
    """One image, its label map and its set of classes."""
    while True:
        image = clutter(rng, size)
        label_map = np.zeros((size, size), dtype=np.uint8)
        count = 2 if rng.uniform() < TWO_OBJECT_PROB else 1
        classes = rng.choice(len(SHAPES), size=count, replace=False)
        areas = []
        for c in classes:
            side = int(round(rng.uniform(*SIZE_RANGE) * size))
            mask = shape_mask(SHAPES[c], side, rng)
            y, x = rng.integers(0, size - side + 1, size=2)
            region = (slice(y, y + side), slice(x, x + side))
            image[region][mask] = bright_color(rng)
            label_map[region][mask] = c + 1
            areas.append(int(mask.sum()))
        visible = [int((label_map == c + 1).sum()) for c in classes]
        if all(v >= MIN_VISIBLE * a for v, a in zip(visible, areas, strict=True)):
            return image, label_map, {int(c) for c in classes}
