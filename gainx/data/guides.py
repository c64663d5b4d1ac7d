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
from gainx.data.coco_segments import check_polygons_on_image
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
    """Guide whose channel ``k`` is 1 inside every box of class ``k``; a crowd box sets :data:`IGNORE`
    in every channel (over any box it overlaps).

    Boxes are in pixel coordinates of an image of ``source_size = (height, width)``
    and are scaled to ``size = (H, W)``; a pixel is inside when the scaled box
    touches it (columns ``floor(x0') .. ceil(x1') - 1``), so no box vanishes.
    """
    (sh, sw), (h, w) = source_size, size
    fy, fx = h / sh, w / sw
    guide = np.zeros((num_classes, h, w), dtype=np.uint8)
    for b in sorted(boxes, key=lambda b: b.crowd):  # crowd boxes last: ignore wins
        r0, r1 = math.floor(b.y0 * fy), min(h, math.ceil(b.y1 * fy))
        c0, c1 = math.floor(b.x0 * fx), min(w, math.ceil(b.x1 * fx))
        if b.crowd:
            guide[:, r0:r1, c0:c1] = IGNORE
        else:
            guide[b.label, r0:r1, c0:c1] = 1
    return guide


def rasterize_segments(
    segments: Sequence[Segment], num_classes: int, source_size: tuple[int, int], size: tuple[int, int], origin: str
) -> np.ndarray:
    """Guide from COCO instance outlines (polygons or RLE, decoded by pycocotools).

    Channel ``k`` is the union of the class-``k`` instances; crowd instances set :data:`IGNORE` in every
    channel. The outlines are merged per class (and crowd) as run lengths and each union is decoded
    once, so the cost is one ``height x width`` decode per class present, not one per instance. The
    guide is built at ``source_size = (height, width)`` and resized to ``size`` by nearest neighbour
    (pixel centres). The outlines must have passed :func:`gainx.data.coco_segments.check_segmentations`;
    their polygons are checked against the image (:func:`gainx.data.coco_segments.check_polygons_on_image`)
    before any is rasterized.
    """
    mask_api = require("pycocotools.mask", extra="coco", feature="the COCO layout")
    h, w = source_size
    check_polygons_on_image(segments, h, w, origin)
    groups: dict[int | None, list] = {}  # class index (None: crowd) -> its instances' RLEs
    for seg in segments:
        groups.setdefault(None if seg.crowd else seg.label, []).extend(
            _as_rles(mask_api, seg.segmentation, h, w, f"{origin} annotation {seg.ann_id}")
        )
    guide = np.zeros((num_classes, h, w), dtype=np.uint8)
    for label, rles in groups.items():
        if label is not None:
            guide[label][_decode_union(mask_api, rles, h, w)] = 1
    if None in groups:
        guide[:, _decode_union(mask_api, groups[None], h, w)] = IGNORE
    if (h, w) == tuple(size):
        return guide
    rows = ((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64)
    cols = ((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64)
    return np.ascontiguousarray(guide[:, rows][:, :, cols])


def _decode_union(mask_api, rles: list, h: int, w: int) -> np.ndarray:
    """The ``(h, w)`` bool mask of the union of ``rles``."""
    return mask_api.decode([mask_api.merge(rles, intersect=False)]).reshape(h, w).astype(bool)


def _as_rles(mask_api, segmentation, h: int, w: int, origin: str) -> list:
    """Polygons, uncompressed or compressed RLE -> a list of compressed RLEs of an ``h x w`` image."""
    if isinstance(segmentation, list):
        return mask_api.frPyObjects(segmentation, h, w)
    if list(segmentation["size"]) != [h, w]:
        raise DatasetError(
            f"{origin}: RLE size {list(segmentation['size'])} differs from the image's (height, width) {[h, w]}"
        )
    if isinstance(segmentation["counts"], list):
        return [mask_api.frPyObjects(segmentation, h, w)]
    return [{"size": [h, w], "counts": segmentation["counts"]}]
