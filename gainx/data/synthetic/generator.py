"""Building blocks of the generated benchmarks (decoy, co-occurrence, shapes).

* :func:`shape_mask`: a filled shape of one of :data:`SHAPES` as a boolean
  mask, with random size, aspect and (for some shapes) rotation;
* :func:`start_dataset`: validates the common arguments and prepares the
  folder; generators finish with :func:`gainx.data.manifest.write_manifest`;
* :func:`biased_contexts`, :func:`other_classes`: the context class of each
  image in the splits of a bias benchmark (co-occurrence, photos).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")


def shape_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """``(size, size)`` bool mask of a filled ``kind`` spanning most of the square."""
    if kind not in SHAPES:
        raise ValueError(f"unknown shape {kind!r}; shapes are {SHAPES}")
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    aspect = rng.uniform(0.8, 1.0)
    angle = rng.uniform(-0.4, 0.4) if kind in ("square", "cross", "triangle") else 0.0
    cos, sin = np.cos(angle), np.sin(angle)
    u = ((xx - c) * cos + (yy - c) * sin) / (size / 2.0)
    v = (-(xx - c) * sin + (yy - c) * cos) / (size / 2.0 * aspect)
    if kind == "circle":
        return u**2 + v**2 <= 0.95
    if kind == "ring":
        r2 = u**2 + v**2
        return (r2 <= 0.95) & (r2 >= 0.35)
    if kind == "square":
        return (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7)
    if kind == "diamond":
        return np.abs(u) + np.abs(v) <= 0.95
    if kind == "cross":
        return ((np.abs(u) <= 0.28) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.28) & (np.abs(u) <= 0.95))
    return (v <= 0.75) & (v >= 1.7 * np.abs(u) - 0.95)  # triangle, apex up


def bright_color(rng: np.random.Generator) -> np.ndarray:
    """A saturated RGB colour in [0, 255] (random hue)."""
    rgb = rng.uniform(0.0, 1.0, size=3)
    rgb[rng.integers(3)] = 1.0
    rgb[rng.integers(3)] = rng.uniform(0.0, 0.3)
    return 90.0 + 165.0 * rgb


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a uint8 image (RGB or label map); rounded and clipped."""
    Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8)).save(path, compress_level=1)


def start_dataset(out: str | Path, image_size: int, train_size: int, test_size: int, mask_fraction: float) -> Path:
    """Validate the common generator arguments, create ``out`` and remove an old
    ``manifest.csv`` (the new one is written last by :func:`gainx.data.manifest.write_manifest`,
    so a reader never sees a manifest listing half-written files)."""
    if not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
    if not 0.0 <= mask_fraction <= 1.0:
        raise ValueError(f"mask_fraction must be in [0, 1], got {mask_fraction!r}")
    if train_size < 1 or test_size < 1:
        raise ValueError(f"train_size and test_size must be >= 1, got {train_size}, {test_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.csv").unlink(missing_ok=True)
    return out


def masked_subset(rng: np.random.Generator, n: int, fraction: float) -> set[int]:
    """Exactly ``round(fraction * n)`` distinct indices in ``[0, n)``."""
    return set(rng.choice(n, size=round(fraction * n), replace=False).tolist())


def balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``n`` labels in ``[0, k)`` in random order, each class ``n // k`` or ``n // k + 1`` times."""
    return rng.permutation(np.arange(n) % k)


def check_bias(bias: float) -> None:
    """``bias`` (the probability that an image's context is its label's) must be in [0, 1]."""
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias must be in [0, 1], got {bias!r}")


def biased_contexts(rng: np.random.Generator, labels: Sequence[int], k: int, bias: float) -> list[int]:
    """Per label ``y``: ``y`` with probability ``bias``, else one of the other ``k - 1`` classes uniformly.

    ``bias = 1 / k`` makes the context independent of the label (uniform over the ``k`` classes)."""
    return [int(y) if rng.uniform() < bias else other_class(rng, y, k) for y in labels]


def other_classes(rng: np.random.Generator, labels: Sequence[int], k: int) -> list[int]:
    """Per label ``y``: a class drawn uniformly among the ``k - 1`` others (never ``y``)."""
    return [other_class(rng, y, k) for y in labels]


def other_class(rng: np.random.Generator, y: int, k: int) -> int:
    """A class drawn uniformly among the ``k - 1`` classes other than ``y``."""
    return int((y + rng.integers(1, k)) % k)
