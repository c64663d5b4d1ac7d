"""Co-occurring-background bias benchmark ("boats on water").

Each image shows one object (a shape of :data:`gainx.data.synthetic.SHAPES`, random
size and colour) resting on a large *context* region: a textured band that
fills the lower 40-60% of the canvas, like water under a boat. Each class has
its own context (band colour, stripe orientation and frequency,
:data:`CONTEXTS`). The object overlaps the band's upper edge, so the bias
cue is large, touches the object and is what a coarse attention map covers
first -- harder than the corner swatch of the decoy benchmark.

Splits:

* ``train``: the context is the label's with probability ``bias`` (default 1),
  otherwise another class's;
* ``test_consistent``: context = label;
* ``test_conflicting``: the same objects, positions and bands, with the
  context of a uniformly drawn *other* class (never the label's).

Every test image carries the object's mask (label map, value ``label + 1``);
in ``train`` exactly ``round(mask_fraction * train_size)`` images do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gainx.data.manifest import write_manifest
from gainx.data.synthetic.generator import (
    SHAPES,
    biased_contexts,
    bright_color,
    check_bias,
    masked_subset,
    other_classes,
    save_png,
    shape_mask,
    start_dataset,
)

# (RGB, stripe angle in radians, stripe period in pixels at 32 px), one per class
CONTEXTS: tuple[tuple[tuple[int, int, int], float, float], ...] = (
    ((40, 90, 200), 0.0, 4.0),
    ((60, 160, 60), 0.8, 5.0),
    ((170, 120, 60), 1.57, 3.0),
    ((150, 60, 150), 2.4, 6.0),
    ((60, 170, 170), 0.4, 3.5),
    ((180, 170, 60), 2.0, 4.5),
)
SIZE_RANGE = (0.4, 0.65)


def write_cooccur(
    out: str | Path,
    image_size: int = 32,
    seed: int = 0,
    mask_fraction: float = 0.05,
    train_size: int = 1500,
    test_size: int = 300,
    bias: float = 1.0,
) -> Path:
    """Write the co-occurrence benchmark to ``out`` and return ``out``."""
    out = start_dataset(out, image_size, train_size, test_size, mask_fraction)
    check_bias(bias)
    rng = np.random.default_rng(seed)
    k = len(SHAPES)
    rows: list[tuple[str, str, str, str]] = []
    train = [_draw(rng, image_size) for _ in range(train_size)]
    masked = masked_subset(rng, train_size, mask_fraction)
    contexts = biased_contexts(rng, [s["label"] for s in train], k, bias)
    rows += _write_split(out, "train", train, contexts, masked, image_size)
    test = [_draw(rng, image_size) for _ in range(test_size)]
    everything = set(range(test_size))
    rows += _write_split(out, "test_consistent", test, [s["label"] for s in test], everything, image_size)
    other = other_classes(rng, [s["label"] for s in test], k)
    rows += _write_split(out, "test_conflicting", test, other, everything, image_size)
    meta = {
        "name": "cooccur-shapes",
        "image_size": image_size,
        "seed": seed,
        "generator": {
            "mask_fraction": mask_fraction,
            "train_size": train_size,
            "test_size": test_size,
            "train_masked": len(masked),
            "bias": bias,
            "size_range": list(SIZE_RANGE),
            "contexts": [list(c) for c in CONTEXTS],
            "splits": {
                "train": "context = label with probability bias",
                "test_consistent": "context = label",
                "test_conflicting": "context of another class (same objects as test_consistent)",
            },
        },
    }
    return write_manifest(out, rows, SHAPES, meta)


def _draw(rng: np.random.Generator, size: int) -> dict:
    """Object class, mask, colour, placement, band height and noise seed of one image."""
    label = int(rng.integers(len(SHAPES)))
    side = int(round(rng.uniform(*SIZE_RANGE) * size))
    band_top = int(round(rng.uniform(0.4, 0.6) * size))
    y = int(np.clip(band_top - side * rng.uniform(0.5, 0.9), 0, size - side))
    return {
        "label": label,
        "mask": shape_mask(SHAPES[label], side, rng),
        "color": bright_color(rng),
        "y": y,
        "x": int(rng.integers(0, size - side + 1)),
        "band_top": band_top,
        "phase": rng.uniform(0, 2 * np.pi),
        "noise_seed": int(rng.integers(0, 2**63)),
    }


def context_band(context: int, size: int, band_top: int, phase: float) -> np.ndarray:
    """``(size, size)`` stripe intensity in [0, 1] of ``context`` (0 above ``band_top``)."""
    _, angle, period = CONTEXTS[context]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    scale = 32.0 / size
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) * scale / period + phase)
    wave[:band_top] = 0.0
    return wave


def _write_split(
    out: Path, split: str, draws: list[dict], contexts: list[int], masked: set[int], size: int
) -> list[tuple[str, str, str, str]]:
    (out / split).mkdir(exist_ok=True)
    rows = []
    for i, (d, ctx) in enumerate(zip(draws, contexts, strict=True)):
        noise = np.random.default_rng(d["noise_seed"])
        canvas = noise.normal(0.0, 8.0, size=(size, size, 3)) + np.array([120.0, 120.0, 130.0])
        wave = context_band(ctx, size, d["band_top"], d["phase"])[..., None]
        color = np.array(CONTEXTS[ctx][0], dtype=np.float64)
        band = np.arange(size)[:, None, None] >= d["band_top"]
        canvas = np.where(band, color * (0.55 + 0.45 * wave) + noise.normal(0.0, 8.0, size=(size, size, 3)), canvas)
        side = d["mask"].shape[0]
        region = canvas[d["y"] : d["y"] + side, d["x"] : d["x"] + side]
        region[d["mask"]] = d["color"]
        name = f"{split}/{i:06d}"
        save_png(canvas, out / f"{name}.png")
        mask = ""
        if i in masked:
            label_map = np.zeros((size, size), dtype=np.uint8)
            label_map[d["y"] : d["y"] + side, d["x"] : d["x"] + side][d["mask"]] = d["label"] + 1
            mask = f"{name}_mask.png"
            save_png(label_map, out / mask)
        rows.append((f"{name}.png", SHAPES[d["label"]], split, mask))
    return rows
