"""What a dataset layout hands to :class:`~gainx.data.dataset.GainDataset`.

A layout (CSV manifest, Pascal VOC) validates its index eagerly and produces one
:class:`Sample` per image; pixels are decoded lazily by the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IGNORE = 255  # guide / label-map value for "no supervision here" (VOC object borders)
MAX_CLASSES = IGNORE - 1  # label maps hold 0 (background), k + 1 (class k) and IGNORE in a uint8
MAX_IMAGE_SIDE = 4096  # largest model input side: a size read from a file may not ask for more memory than this


class DatasetError(ValueError):
    """A dataset file or entry is malformed; the message names the file (and row)."""


@dataclass(frozen=True)
class Box:
    """An axis-aligned box of class ``label`` in continuous pixel coordinates of the
    original image: ``0 <= x0 < x1 <= width``, ``0 <= y0 < y1 <= height``. ``crowd`` (COCO ``iscrowd``):
    its pixels carry no supervision (:data:`IGNORE`)."""

    label: int
    x0: float
    y0: float
    x1: float
    y1: float
    crowd: bool = False


@dataclass(frozen=True)
class Segment:
    """One COCO instance of class ``label``: its ``segmentation`` as the JSON stores it (a list of
    polygons ``[x0, y0, x1, y1, ...]`` or an RLE dict). ``crowd`` (COCO ``iscrowd``): its pixels carry
    no supervision (:data:`IGNORE`). ``ann_id``: the annotation's ``id``, named in errors."""

    label: int
    segmentation: Any
    crowd: bool = False
    ann_id: Any = None


@dataclass(frozen=True)
class Sample:
    """One image: its file, class indices, optional guide source and its origin.

    ``origin`` says where the sample was declared (e.g. ``manifest.csv line 7``)
    so decoding errors can point at it. At most one of ``mask`` / ``boxes`` / ``segments`` is set.
    """

    image: Path
    labels: tuple[int, ...]
    origin: str
    mask: Path | None = None
    boxes: tuple[Box, ...] = ()
    segments: tuple[Segment, ...] = ()

    @property
    def has_guide(self) -> bool:
        return self.mask is not None or bool(self.boxes) or bool(self.segments)


def as_size(image_size: int | tuple[int, int] | list[int], what: str = "image_size") -> tuple[int, int]:
    """``int`` -> ``(s, s)``; ``(height, width)`` is validated (each in ``[1, MAX_IMAGE_SIDE]``) and returned."""
    if isinstance(image_size, bool):
        raise DatasetError(f"{what} must be an int or (height, width), got {image_size!r}")
    given = image_size
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if not (isinstance(image_size, (tuple, list)) and len(image_size) == 2):
        raise DatasetError(f"{what} must be an int or (height, width), got {image_size!r}")
    h, w = image_size
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise DatasetError(f"{what} must hold positive ints, got {image_size!r}")
    if max(h, w) > MAX_IMAGE_SIDE:
        raise DatasetError(f"{what} {given!r} is too large: each side must be <= {MAX_IMAGE_SIDE}")
    return (h, w)
