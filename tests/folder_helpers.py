"""Tiny generated data sets in the user-facing layouts (ImageFolder, Pascal VOC with boxes only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_imagefolder(root: Path, splits: dict[str, int], classes: tuple[str, ...] = ("cat", "dog"), size: int = 40):
    """``root/<split>/<class>/<i>.jpg``: ``splits[split]`` noise images per class, each class tinted its own
    colour so that a model can tell them apart. Returns ``root``."""
    rng = np.random.default_rng(0)
    for split, count in splits.items():
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 128, (size, size, 3), dtype=np.uint8)
                pixels[..., k % 3] += 120
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    return root


def write_voc_with_boxes(root: Path, count: int = 4, size: int = 24) -> Path:
    """A Pascal VOC tree whose images have XML boxes (one ``dog`` or ``cat`` each) and no
    ``SegmentationClass`` masks; split list ``ImageSets/Main/train.txt``. Returns ``root``."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = [f"2008_{i:06d}" for i in range(count)]
    for i, image_id in enumerate(ids):
        name = ("dog", "cat")[i % 2]
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{image_id}.jpg"
        )
        box = f"<xmin>2</xmin><ymin>3</ymin><xmax>{size // 2}</xmax><ymax>{size - 2}</ymax>"
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>{size}</width><height>{size}</height><depth>3</depth></size>"
            f"<object><name>{name}</name><difficult>0</difficult><bndbox>{box}</bndbox></object></annotation>"
        )
    (root / "ImageSets/Main/train.txt").write_text("\n".join(ids) + "\n")
    return root
