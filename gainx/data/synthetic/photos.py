"""Photo-context bias benchmark: shapes on crops of real photographs.

Each class (a shape of :data:`gainx.data.synthetic.SHAPES`) has one photograph
as its context (:data:`PHOTOS`: four that scikit-image ships and two that
scikit-learn ships; all are installed with the packages, nothing is
downloaded). An image is a square crop of a photograph (side 35-100% of the
photo's shorter side, :data:`CROP_RANGE`, at a random position, flipped
left-right with probability 1/2), resized to the canvas, with one object on
it: a filled shape of random colour, side 30-60% of the canvas
(:data:`SIZE_RANGE`), at a random position.

Splits (labels balanced: each class ``n // 6`` or ``n // 6 + 1`` times):

* ``train``: the context is the label's photo with probability ``bias``
  (default 1), otherwise another class's;
* ``val``: new images drawn like ``train`` (bias-consistent at ``bias`` 1),
  for model selection;
* ``test_consistent``: the label's photo;
* ``test_conflicting``: the objects and crops of ``test_consistent`` on the
  photo of a uniformly drawn *other* class (never the label's);
* ``train_unbiased``: the objects and crops of ``train`` on a photo drawn
  uniformly from all six, independent of the label (the oracle's training set).

The object's mask is a label map (value ``label + 1`` on the object's pixels,
0 elsewhere): every test image carries one; in ``train`` exactly
``round(mask_fraction * train_size)`` images do, and the same images in
``train_unbiased``; ``val`` carries none. ``dataset.json`` records each
image's context photo (``generator.contexts``: split -> photo indices into
``generator.photos``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gainx._extras import require
from gainx.data.manifest import write_manifest
from gainx.data.synthetic.generator import (
    SHAPES,
    balanced_labels,
    biased_contexts,
    bright_color,
    check_bias,
    masked_subset,
    other_classes,
    save_png,
    shape_mask,
    start_dataset,
)

# the context photo of each class of SHAPES, in order: (package, name)
PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "astronaut"),
    ("skimage", "coffee"),
    ("skimage", "chelsea"),
    ("skimage", "rocket"),
    ("sklearn", "china.jpg"),
    ("sklearn", "flower.jpg"),
)
CROP_RANGE = (0.35, 1.0)  # crop side / the photo's shorter side
SIZE_RANGE = (0.3, 0.6)  # object side / canvas side

Row = tuple[str, str, str, str]


def load_photos() -> list[Image.Image]:
    """The :data:`PHOTOS` as RGB images, read from the files the packages install (no download)."""
    skimage_data = require("skimage.data", "photos", "the photo benchmark")
    from sklearn.datasets import load_sample_image

    images = [getattr(skimage_data, name)() if pkg == "skimage" else load_sample_image(name) for pkg, name in PHOTOS]
    return [Image.fromarray(np.asarray(im, dtype=np.uint8)).convert("RGB") for im in images]


def write_photos(
    out: str | Path,
    image_size: int = 48,
    seed: int = 0,
    mask_fraction: float = 0.05,
    train_size: int = 2000,
    test_size: int = 300,
    val_size: int | None = None,
    bias: float = 1.0,
) -> Path:
    """Write the photo-context benchmark to ``out`` and return ``out``.

    The default size lets an oracle reach its ceiling: ``small_cnn`` trained on ``train_unbiased``
    (``gainx train --method baseline --epochs 25 --lr 3e-3 --batch-size 64``, seed 0) scored 1.00 on
    ``test_consistent`` and 0.99 on ``test_conflicting``; trained on ``train``, 1.00 and 0.00.

    ``test_size`` images go to each of ``test_consistent`` and ``test_conflicting``, ``val_size``
    (default ``test_size``) to ``val``, ``train_size`` to each of ``train`` and ``train_unbiased``.
    """
    check_bias(bias)  # every argument is checked before start_dataset clears the folder
    val_size = test_size if val_size is None else val_size
    if val_size < 1:
        raise ValueError(f"val_size must be >= 1, got {val_size}")
    out = start_dataset(out, image_size, train_size, test_size, mask_fraction)
    photos = load_photos()
    rng = np.random.default_rng(seed)
    k = len(SHAPES)
    train = _draw(rng, train_size, image_size)
    masked = masked_subset(rng, train_size, mask_fraction)
    val = _draw(rng, val_size, image_size)
    test = _draw(rng, test_size, image_size)
    everything = set(range(test_size))
    contexts = {
        "train": biased_contexts(rng, train["label"], k, bias),
        "train_unbiased": rng.integers(0, k, size=train_size).tolist(),
        "val": biased_contexts(rng, val["label"], k, bias),
        "test_consistent": test["label"].tolist(),
        "test_conflicting": other_classes(rng, test["label"], k),
    }
    plan = {
        "train": (train, masked),
        "train_unbiased": (train, masked),
        "val": (val, set()),
        "test_consistent": (test, everything),
        "test_conflicting": (test, everything),
    }
    rows: list[Row] = []
    for split, (draws, with_mask) in plan.items():
        rows += _write_split(out, split, draws, contexts[split], with_mask, photos, image_size)
    meta = {
        "name": "photo-context",
        "image_size": image_size,
        "seed": seed,
        "generator": {
            "mask_fraction": mask_fraction,
            "train_size": train_size,
            "val_size": val_size,
            "test_size": test_size,
            "train_masked": len(masked),
            "bias": bias,
            "crop_range": list(CROP_RANGE),
            "size_range": list(SIZE_RANGE),
            "photos": [f"{pkg}:{name}" for pkg, name in PHOTOS],
            "splits": {
                "train": "context = the label's photo with probability bias, else another class's",
                "val": "drawn like train (new images), for model selection",
                "test_consistent": "context = the label's photo",
                "test_conflicting": "another class's photo (same objects and crops as test_consistent)",
                "train_unbiased": "the objects and crops of train on a photo independent of the label (oracle)",
            },
            "contexts": contexts,
        },
    }
    return write_manifest(out, rows, SHAPES, meta)


def _draw(rng: np.random.Generator, n: int, size: int) -> dict[str, np.ndarray]:
    """Label, object (side, placement, colour, shape seed) and crop (side, position, flip) of ``n`` images."""
    label = balanced_labels(rng, n, len(SHAPES))
    side = np.round(rng.uniform(*SIZE_RANGE, size=n) * size).astype(int)
    return {
        "label": label,
        "side": side,
        "y": rng.integers(0, size - side + 1),
        "x": rng.integers(0, size - side + 1),
        "color": np.stack([bright_color(rng) for _ in range(n)]),
        "shape_seed": rng.integers(0, 2**63, size=n),
        "crop": rng.uniform(*CROP_RANGE, size=n),
        "crop_y": rng.uniform(0.0, 1.0, size=n),
        "crop_x": rng.uniform(0.0, 1.0, size=n),
        "flip": rng.uniform(size=n) < 0.5,
    }


def crop(photo: Image.Image, scale: float, fy: float, fx: float, flip: bool, size: int) -> np.ndarray:
    """``(size, size, 3)`` float RGB: the square of side ``scale`` x the photo's shorter side, its top-left
    corner at the fractions ``(fy, fx)`` of the free range, resized (antialiased) and flipped if ``flip``."""
    w, h = photo.size
    side = scale * min(w, h)
    x0, y0 = fx * (w - side), fy * (h - side)
    tile = photo.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    if flip:
        tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(tile, dtype=np.float64)


def _write_split(
    out: Path,
    split: str,
    d: dict[str, np.ndarray],
    contexts: list[int],
    masked: set[int],
    photos: list[Image.Image],
    size: int,
) -> list[Row]:
    (out / split).mkdir(exist_ok=True)
    rows = []
    for i, ctx in enumerate(contexts):
        canvas = crop(photos[ctx], d["crop"][i], d["crop_y"][i], d["crop_x"][i], bool(d["flip"][i]), size)
        label, side, y, x = int(d["label"][i]), int(d["side"][i]), int(d["y"][i]), int(d["x"][i])
        shape = shape_mask(SHAPES[label], side, np.random.default_rng(d["shape_seed"][i]))
        canvas[y : y + side, x : x + side][shape] = d["color"][i]
        name = f"{split}/{i:06d}"
        save_png(canvas, out / f"{name}.png")
        mask = ""
        if i in masked:
            label_map = np.zeros((size, size), dtype=np.uint8)
            label_map[y : y + side, x : x + side][shape] = label + 1
            mask = f"{name}_mask.png"
            save_png(label_map, out / mask)
        rows.append((f"{name}.png", SHAPES[label], split, mask))
    return rows
