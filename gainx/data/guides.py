"""Per-class guide maps (the pixel supervision of GAIN's L_e, paper eq. 7).

A guide is a ``(K, H, W)`` uint8 array: ``guide[k, y, x] = 1`` where the pixel
belongs to class ``k``, ``0`` elsewhere and :data:`IGNORE` (255) in every channel
where the pixel carries no supervision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gainx._extras import require
from gainx.data.records import IGNORE, Box, DatasetError, Segment


def label_map_to_guide(label_map: np.ndarray, num_classes: int) -> np.ndarray:
    """Label map (0 = background, ``k+1`` = class ``k``, 255 = ignore) -> guide.

    Values must already be checked to lie in ``{0..num_classes, 255}``.
    """
    codes = np.arange(1, num_classes + 1, dtype=np.uint8)[:, None, None]
    guide = (label_map[None] == codes).astype(np.uint8)
    guide[:, label_map == IGNORE] = IGNORE
    return guide


def rasterize_boxes(
    boxes: Sequence[Box], num_classes: int, source_size: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """Guide whose channel ``k`` is 1 inside every box of class ``k``.

    Boxes are in pixel coordinates of an image of ``source_size = (height, width)``
    and are scaled to ``size = (H, W)``; a pixel is inside when the scaled box
    touches it (columns ``floor(x0') .. ceil(x1') - 1``), so no box vanishes.
    """
    (sh, sw), (h, w) = source_size, size
    fy, fx = h / sh, w / sw
    guide = np.zeros((num_classes, h, w), dtype=np.uint8)
    for b in boxes:
        r0, r1 = math.floor(b.y0 * fy), min(h, math.ceil(b.y1 * fy))
        c0, c1 = math.floor(b.x0 * fx), min(w, math.ceil(b.x1 * fx))
        guide[b.label, r0:r1, c0:c1] = 1
    return guide


def rasterize_segments(
    segments: Sequence[Segment], num_classes: int, source_size: tuple[int, int], size: tuple[int, int], origin: str
) -> np.ndarray:
    """Guide from COCO instance outlines (polygons or RLE, decoded by pycocotools).

    Channel ``k`` is the union of the class-``k`` instances; crowd instances set :data:`IGNORE` in every
    channel. The guide is built at ``source_size = (height, width)`` and resized to ``size`` by
    nearest neighbour (pixel centres).
    """
    mask_api = require("pycocotools.mask", extra="coco", feature="the COCO layout")
    h, w = source_size
    guide = np.zeros((num_classes, h, w), dtype=np.uint8)
    crowd = np.zeros((h, w), dtype=bool)
    for seg in segments:
        rles = _as_rles(mask_api, seg.segmentation, h, w, origin)
        pixels = mask_api.decode(rles).reshape(h, w, -1).any(-1)
        if seg.crowd:
            crowd |= pixels
        else:
            guide[seg.label][pixels] = 1
    guide[:, crowd] = IGNORE
    if (h, w) == tuple(size):
        return guide
    rows = ((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64)
    cols = ((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64)
    return np.ascontiguousarray(guide[:, rows][:, :, cols])


def _as_rles(mask_api, segmentation, h: int, w: int, origin: str) -> list:
    """Polygons, uncompressed or compressed RLE -> a list of compressed RLEs of an ``h x w`` image."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if len(polygons) != len(segmentation) or not polygons:
            raise DatasetError(f"{origin}: a polygon needs at least 3 points (6 numbers)")
        return mask_api.frPyObjects(polygons, h, w)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [h, w]:
            raise DatasetError(
                f"{origin}: RLE size {list(segmentation['size'])} differs from the image's (height, width) {[h, w]}"
            )
        if isinstance(segmentation["counts"], list):
            return [mask_api.frPyObjects(segmentation, h, w)]
        return [{"size": [h, w], "counts": segmentation["counts"]}]
    raise DatasetError(f"{origin}: segmentation must be a list of polygons or an RLE dict with 'counts' and 'size'")
