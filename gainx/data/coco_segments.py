"""Bounds and consistency checks on COCO instance outlines, applied when the index is read and when an image is.

Rasterizing an outline costs time and memory in proportion to its points (pycocotools walks every edge), and
pycocotools trusts RLE runs: runs that stop short of the image leave pixels of its output buffer unset, runs
past it write beyond the buffer. So an image's outlines are bounded and every RLE must cover its image
exactly before anything is decoded:

* at most :data:`MAX_ANNOTATIONS_PER_IMAGE` annotations per image (COCO 2017 has at most 93);
* at most :data:`MAX_POLYGONS_PER_IMAGE` polygons over all of an image's annotations;
* at most :data:`MAX_POLYGON_POINTS` points per polygon and :data:`MAX_IMAGE_POINTS` over all of an
  image's polygons, each polygon at least 3 points of finite numbers;
* an RLE (``{"size": [h, w], "counts": ...}``, counts as a list of run lengths or as COCO's compressed
  string) has non-negative runs whose sum is exactly ``h * w``.

When an image is read, its size known, and before anything is rasterized
(:func:`check_polygons_on_image`, called by :func:`gainx.data.guides.rasterize_segments`): pycocotools walks
each polygon edge at 5x scale, one point per step of ``max(|dx|, |dy|)``, so its time and memory grow with the
edges' length, not their count. Refused:

* a polygon point more than one image width (height) left or right of (above or below) the image;
* an image whose polygons' edge length, the sum over every edge (closing edges included) of
  ``max(|dx|, |dy|)``, exceeds :data:`MAX_EDGE_LENGTH_PER_SIDE` ``x (height + width)``.

So the walk of an image's polygons holds at most ``5 x 64 x (h + w)`` points plus two per polygon point (at
most :data:`MAX_IMAGE_POINTS`, rounding at both ends of an edge): for a 1024 x 1024 image under 0.86 million,
a few megabytes, the order of the one ``h x w`` decode per class that follows. The edge length of an outline
is at most its perimeter (``max(|dx|, |dy|)`` is at most an edge's Euclidean length), so the bound admits
outlines adding up to 32 times the image's own perimeter: dozens of instances, each usually a small fraction
of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gainx.data.records import DatasetError, Segment

MAX_ANNOTATIONS_PER_IMAGE = 1_000
MAX_POLYGONS_PER_IMAGE = 5_000
MAX_POLYGON_POINTS = 10_000
MAX_IMAGE_POINTS = 100_000
MAX_EDGE_LENGTH_PER_SIDE = 64


def check_annotation_count(count: int, where: str) -> None:
    """Refuse an image (``where``: file and image id) with more than :data:`MAX_ANNOTATIONS_PER_IMAGE`."""
    if count > MAX_ANNOTATIONS_PER_IMAGE:
        raise DatasetError(
            f"{where}: more than {MAX_ANNOTATIONS_PER_IMAGE} annotations (MAX_ANNOTATIONS_PER_IMAGE) on one image"
        )


def check_segmentations(anns: list[dict], where: str) -> None:
    """Check the ``segmentation`` of each of one image's annotations (``where``: file and image id)
    against the bounds of the module docstring; errors name the annotation id and the limit."""
    polygons = points = 0
    for ann in anns:
        segmentation = ann.get("segmentation")
        if not segmentation:
            continue
        origin = f"{where} annotation {ann.get('id')}"
        if isinstance(segmentation, list):
            polygons += len(segmentation)
            if polygons > MAX_POLYGONS_PER_IMAGE:
                raise DatasetError(f"{origin}: more than {MAX_POLYGONS_PER_IMAGE} polygons (MAX_POLYGONS_PER_IMAGE)")
            for polygon in segmentation:
                points += _polygon_points(polygon, origin)
                if points > MAX_IMAGE_POINTS:
                    raise DatasetError(
                        f"{origin}: the image's polygons hold more than {MAX_IMAGE_POINTS} points (MAX_IMAGE_POINTS)"
                    )
        elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
            check_rle(segmentation, origin)
        else:
            raise DatasetError(
                f"{origin}: segmentation must be a list of polygons or an RLE dict with 'counts' and 'size'"
            )


def _polygon_points(polygon: Any, origin: str) -> int:
    """The number of points of ``polygon`` (``[x0, y0, x1, y1, ...]``), refused when malformed or too long."""
    if not isinstance(polygon, list) or len(polygon) % 2 or len(polygon) < 6:
        raise DatasetError(f"{origin}: a polygon is a list of at least 3 points (6 numbers, x y pairs)")
    if len(polygon) > 2 * MAX_POLYGON_POINTS:
        raise DatasetError(
            f"{origin}: a polygon of {len(polygon) // 2} points, more than {MAX_POLYGON_POINTS} (MAX_POLYGON_POINTS)"
        )
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in polygon):
        raise DatasetError(f"{origin}: polygon coordinates must be finite numbers")
    return len(polygon) // 2


def check_rle(rle: dict, origin: str) -> None:
    """Refuse an RLE whose ``size`` is not two positive ints or whose runs do not cover ``h * w`` exactly."""
    size = rle["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_count(v) and v > 0 for v in size)):
        raise DatasetError(f"{origin}: RLE size must be [height, width] of positive ints, got {size!r}")
    counts = rle["counts"]
    if isinstance(counts, str):
        runs = decode_rle_string(counts, origin)
    elif isinstance(counts, list) and all(_is_count(v) and v >= 0 for v in counts):
        runs = counts
    else:
        raise DatasetError(f"{origin}: RLE counts must be a list of non-negative ints or a compressed RLE string")
    h, w = size
    if sum(runs) != h * w:
        raise DatasetError(f"{origin}: RLE runs cover {sum(runs)} pixels, the size {size} has {h * w}")


def decode_rle_string(text: str, origin: str) -> list[int]:
    """COCO's compressed RLE string -> run lengths (the inverse of pycocotools' ``rleToString``).

    Each run is a signed little-endian base-32 number, 5 bits per character (offset by 48), the 0x20
    bit meaning "more characters follow"; from the fourth run on, the number is the difference to the
    run two places earlier. Refused: characters outside ``'0'..'o'``, a number cut off at the end of
    the string, a negative run.
    """
    runs: list[int] = []
    p = 0
    while p < len(text):
        x = k = 0
        more = True
        while more:
            if p == len(text):
                raise DatasetError(f"{origin}: compressed RLE counts end in the middle of a run")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise DatasetError(f"{origin}: compressed RLE counts hold {text[p]!r}, outside '0'..'o'")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x -= 1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            raise DatasetError(f"{origin}: compressed RLE counts decode to a negative run ({x})")
        runs.append(x)
    return runs


def check_polygons_on_image(segments: Sequence[Segment], h: int, w: int, origin: str) -> None:
    """Check the polygons of one ``h x w`` image (``origin``: file and image id) against the extent and the
    edge length bounds of the module docstring, before any is rasterized; errors name the annotation id and
    the limit. The polygons must have passed :func:`check_segmentations`."""
    limit = MAX_EDGE_LENGTH_PER_SIDE * (h + w)
    total = 0.0
    for seg in segments:
        if not isinstance(seg.segmentation, list):
            continue
        where = f"{origin} annotation {seg.ann_id}"
        xy = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in seg.segmentation]
        _check_extent(np.concatenate(xy), h, w, where)
        total += sum(edge_length(p) for p in xy)
        if total > limit:
            raise DatasetError(
                f"{where}: the image's polygon edges are {total:.1f} pixels long (sum of max(|dx|, |dy|)), more than "
                f"{MAX_EDGE_LENGTH_PER_SIDE} x (height + width) = {limit} (MAX_EDGE_LENGTH_PER_SIDE)"
            )


def edge_length(xy: np.ndarray) -> float:
    """Sum over the edges of the closed polygon ``xy`` (``(n, 2)`` points) of ``max(|dx|, |dy|)``."""
    return float(np.abs(xy - np.roll(xy, -1, axis=0)).max(axis=1).sum())


def _check_extent(xy: np.ndarray, h: int, w: int, where: str) -> None:
    """Refuse a point more than one image width (height) left or right of (above or below) the image."""
    low, high = xy.min(0), xy.max(0)
    if low[0] < -w or low[1] < -h or high[0] > 2 * w or high[1] > 2 * h:
        raise DatasetError(
            f"{where}: polygon points span x {low[0]:g}..{high[0]:g}, y {low[1]:g}..{high[1]:g}, more than one "
            f"image side beyond the {w}x{h} image"
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
