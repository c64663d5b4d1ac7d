"""Per-class guide maps (the pixel supervision of GAIN's L_e, paper eq. 7).

A guide is a ``(K, H, W)`` uint8 array: ``guide[k, y, x] = 1`` where the pixel
belongs to class ``k``, ``0`` elsewhere and :data:`IGNORE` (255) in every channel
where the pixel carries no supervision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gainx.data.records import IGNORE, Box


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
