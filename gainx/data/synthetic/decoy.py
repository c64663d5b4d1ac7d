"""Decoy-digits benchmark: a shortcut that GAIN's pixel supervision must overcome.

After Ross et al. 2017 ("Right for the right reasons", Decoy MNIST): real
handwritten digits (``sklearn.datasets.load_digits``, bundled, 1797 8x8 images)
are upsampled to ~45% of a dark RGB canvas at a random position, and a small
coloured swatch is painted in a random free corner. The swatch colour
(:data:`DECOY_COLORS`) encodes a class:

* ``train`` and ``test_consistent``: the swatch encodes the digit's label, so a
  plain classifier can take the (much easier) colour shortcut (in ``train``
  with probability ``bias``, else another class's colour: ``bias = 0.1``
  draws it independently of the label, the data of the oracle);
* ``test_random``: same digits, placements and corners as ``test_consistent``,
  but the swatch encodes a uniformly random class, independent of the label.

Train and test draw from disjoint source digits. Every test image carries a
pixel mask of the digit (label map, value label+1); in ``train`` only a
``mask_fraction`` of the images do -- GAIN_ext's weak pixel supervision
(paper sec. 3.2, eq. 7-8). Written as a CSV manifest (layout b) with
``classes.txt`` and ``dataset.json``; deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gainx.data.manifest import write_manifest
from gainx.data.synthetic.generator import biased_contexts, check_bias, masked_subset, save_png, start_dataset

DECOY_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (250, 190, 212), (128, 128, 0),
)  # fmt: skip
TEST_SOURCE_FRACTION = 0.3
MASK_THRESHOLD = 0.3  # digit ink (0..1 after upsampling) above this is "digit" in the mask


@dataclass(frozen=True)
class DecoyGeometry:
    """Pixel sizes derived from the canvas size (recorded in dataset.json)."""

    image_size: int
    digit_size: int
    swatch_size: int
    swatch_margin: int

    @classmethod
    def for_size(cls, image_size: int) -> DecoyGeometry:
        return cls(image_size, round(0.45 * image_size), max(2, round(image_size / 8)), max(1, image_size // 24))

    def corners(self) -> list[tuple[int, int]]:
        """Top-left ``(y, x)`` of the swatch in each corner: TL, TR, BL, BR."""
        lo, hi = self.swatch_margin, self.image_size - self.swatch_margin - self.swatch_size
        return [(lo, lo), (lo, hi), (hi, lo), (hi, hi)]


def write_decoy(
    out: str | Path,
    image_size: int = 48,
    seed: int = 0,
    mask_fraction: float = 0.05,
    train_size: int = 2000,
    test_size: int = 500,
    bias: float = 1.0,
) -> Path:
    """Write the decoy-digits dataset to ``out`` and return ``out``.

    ``test_size`` images go to each of ``test_consistent`` and ``test_random``.
    Exactly ``round(mask_fraction * train_size)`` train images carry a mask. An
    old ``manifest.csv`` in ``out`` is removed first and the new one written
    last (atomically), so a reader never sees a manifest of half-written files;
    image files of an earlier, larger run stay on disk but are not listed.
    ``bias < 1`` draws the training swatches from a stream of their own, so every
    other pixel is that of ``bias = 1`` at the same seed.
    """
    check_bias(bias)
    out = start_dataset(out, image_size, train_size, test_size, mask_fraction)
    from sklearn.datasets import load_digits

    geo = DecoyGeometry.for_size(image_size)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    n_test = round(TEST_SOURCE_FRACTION * len(order))
    pools = {"train": order[n_test:], "test": order[:n_test]}
    ink = _upsample(digits.images / 16.0, geo.digit_size)

    rows: list[tuple[str, str, str, str]] = []
    train = _draw(rng, pools["train"], train_size, digits.target, geo)
    masked = masked_subset(rng, train_size, mask_fraction)
    train_decoy = train["labels"]
    if bias < 1.0:
        train_decoy = np.array(biased_contexts(np.random.default_rng((seed, 1)), train_decoy, len(DECOY_COLORS), bias))
    rows += _write_split(out, "train", train, train_decoy, ink, geo, masked)
    test = _draw(rng, pools["test"], test_size, digits.target, geo)
    everything = set(range(test_size))
    rows += _write_split(out, "test_consistent", test, test["labels"], ink, geo, everything)
    random_decoy = rng.integers(0, 10, size=test_size)
    rows += _write_split(out, "test_random", test, random_decoy, ink, geo, everything)

    meta = {
        "name": "decoy-digits",
        "image_size": image_size,
        "seed": seed,
        "generator": {
            **asdict(geo),
            "mask_fraction": mask_fraction,
            "bias": bias,
            "train_size": train_size,
            "test_size": test_size,
            "train_masked": len(masked),
            "mask_threshold": MASK_THRESHOLD,
            "source": "sklearn.datasets.load_digits",
            "source_digits": {"train": len(pools["train"]), "test": len(pools["test"])},
            "decoy_colors": [list(c) for c in DECOY_COLORS],
            "splits": {
                "train": "decoy colour = label" if bias == 1.0 else f"decoy colour = label with probability {bias}",
                "test_consistent": "decoy colour = label",
                "test_random": "decoy colour uniformly random (same digits as test_consistent)",
            },
        },
    }
    return write_manifest(out, rows, [str(c) for c in range(10)], meta)


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    """``(n, 8, 8)`` ink in [0, 1] -> ``(n, size, size)`` (bilinear)."""
    t = torch.from_numpy(images).float().unsqueeze(1)
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).squeeze(1).clamp(0, 1).numpy()


def _draw(
    rng: np.random.Generator, pool: np.ndarray, n: int, targets: np.ndarray, geo: DecoyGeometry
) -> dict[str, np.ndarray]:
    """Source digit, position, swatch corner, brightness and background seed per image."""
    reps = -(-n // len(pool))
    source = np.concatenate([rng.permutation(pool) for _ in range(reps)])[:n]
    span = geo.image_size - geo.digit_size + 1
    ys, xs = rng.integers(0, span, size=n), rng.integers(0, span, size=n)
    corners = np.array([rng.choice(_free_corners(geo, y, x)) for y, x in zip(ys, xs, strict=True)])
    return {
        "source": source,
        "labels": targets[source],
        "y": ys,
        "x": xs,
        "corner": corners,
        "brightness": rng.uniform(0.75, 1.0, size=n),
        "noise_seed": rng.integers(0, 2**63, size=n),
    }


def _free_corners(geo: DecoyGeometry, y: int, x: int) -> list[int]:
    """Corners whose swatch does not overlap the digit's square at ``(y, x)``."""
    d, s = geo.digit_size, geo.swatch_size
    return [i for i, (cy, cx) in enumerate(geo.corners()) if cy + s <= y or cy >= y + d or cx + s <= x or cx >= x + d]


def _write_split(
    out: Path,
    split: str,
    draw: dict[str, np.ndarray],
    decoy: np.ndarray,
    ink: np.ndarray,
    geo: DecoyGeometry,
    masked: set[int],
) -> list[tuple[str, str, str, str]]:
    (out / split).mkdir(exist_ok=True)
    n, d, s = geo.image_size, geo.digit_size, geo.swatch_size
    corners = geo.corners()
    rows = []
    for i in range(len(draw["source"])):
        noise = np.random.default_rng(draw["noise_seed"][i]).normal(20.0, 6.0, size=(n, n, 3))
        canvas = noise.clip(0, 60)
        y, x, digit = draw["y"][i], draw["x"][i], ink[draw["source"][i]]
        region = canvas[y : y + d, x : x + d]
        np.maximum(region, (digit * 255.0 * draw["brightness"][i])[..., None], out=region)
        cy, cx = corners[draw["corner"][i]]
        canvas[cy : cy + s, cx : cx + s] = DECOY_COLORS[decoy[i]]
        name = f"{split}/{i:06d}"
        save_png(canvas, out / f"{name}.png")
        mask = ""
        if i in masked:
            label_map = np.zeros((n, n), dtype=np.uint8)
            label_map[y : y + d, x : x + d][digit > MASK_THRESHOLD] = draw["labels"][i] + 1
            mask = f"{name}_mask.png"
            save_png(label_map, out / mask)
        rows.append((f"{name}.png", str(draw["labels"][i]), split, mask))
    return rows
