"""Layout (c): COCO instances JSON.

``annotations/instances_<split>.json`` with the images in ``<split>/``, ``images/<split>/``, ``images/``
or the root (the COCO 2017 download), or Roboflow's export ``<split>/_annotations.coco.json`` beside its
images. Image-level labels are the categories of an image's annotations (multi-label; an image without
annotations has no labels). Guides: the instance outlines (polygons or RLE, decoded by pycocotools, the
``coco`` extra; bounded and checked by :mod:`gainx.data.coco_segments` when the index is read), the boxes, or
none; an ``iscrowd`` instance's outline (masks) or box (boxes) is an ignore region in every channel, as is
the box of an instance without an outline in an image with outlines (masks; an image with none has no mask). Image
files must lie inside ``root`` (the data folder, not the split folder: a split folder symlinked elsewhere is
outside) unless ``allow_outside_root``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gainx._extras import require
from gainx.data.coco_segments import check_annotation_count, check_segmentations
from gainx.data.dataset import GainDataset
from gainx.data.names import check_class_names
from gainx.data.paths import resolve_inside
from gainx.data.records import Box, DatasetError, Sample, Segment

DEFAULT_IMAGE_SIZE = 320
GUIDES = ("masks", "boxes", "none")
ROBOFLOW_JSON = "_annotations.coco.json"


def is_coco(root: Path) -> bool:
    """Whether ``root`` holds COCO instance files (either naming)."""
    return any((root / "annotations").glob("instances_*.json")) or any(root.glob(f"*/{ROBOFLOW_JSON}"))


def coco_splits(root: Path) -> list[str]:
    """The split names ``root`` has annotation files for."""
    named = [p.stem.removeprefix("instances_") for p in (root / "annotations").glob("instances_*.json")]
    return sorted(named + [p.parent.name for p in root.glob(f"*/{ROBOFLOW_JSON}")])


def load_coco(
    root: Path,
    split: str,
    image_size: int | tuple[int, int] | None = None,
    augment: bool = False,
    guide: str = "masks",
    allow_outside_root: bool = False,
) -> GainDataset:
    """Build ``split`` of the COCO data set at ``root`` (see the module docstring)."""
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES} for the COCO layout, got {guide!r}")
    if guide == "masks":
        require("pycocotools.mask", extra="coco", feature="the COCO layout's mask guides")
    ann_file, image_dir = _split_files(root, split)
    data = _read_json(ann_file)
    classes, category_index = _categories(ann_file, data["categories"])
    images = {}
    for n, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not {"id", "file_name"} <= image.keys():
            raise DatasetError(f"{ann_file}: images[{n}] needs 'id' and 'file_name'")
        if image["id"] in images:
            raise DatasetError(f"{ann_file}: images[{n}] repeats image id {image['id']}")
        images[image["id"]] = image
    per_image: dict[Any, list[dict]] = {i: [] for i in images}
    for n, ann in enumerate(data["annotations"]):
        where = f"{ann_file} annotations[{n}] (id {ann.get('id')})"
        if ann.get("image_id") not in images:
            raise DatasetError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in category_index:
            raise DatasetError(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'")
        anns = per_image[ann["image_id"]]
        anns.append(ann)
        check_annotation_count(len(anns), f"{ann_file} image id {ann['image_id']}")
    samples = [
        _sample(root, image_dir, ann_file, images[i], per_image[i], category_index, guide, allow_outside_root)
        for i in images
    ]
    if not samples:
        raise DatasetError(f"{ann_file}: split {split!r} lists no images")
    return GainDataset(samples, classes, True, image_size if image_size is not None else DEFAULT_IMAGE_SIZE, augment)


def _split_files(root: Path, split: str) -> tuple[Path, Path]:
    """The annotation file of ``split`` and the folder its ``file_name``s are relative to."""
    roboflow = root / split / ROBOFLOW_JSON
    if roboflow.is_file():
        return roboflow, root / split
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise DatasetError(f"{root}: no COCO annotation file for split {split!r}; splits present: {coco_splits(root)}")
    for folder in (root / split, root / "images" / split, root / "images"):
        if folder.is_dir():
            return ann_file, folder
    return ann_file, root


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise DatasetError(f"{path}: not a COCO instances file, missing {missing}")
    return data


def _categories(path: Path, categories: list[dict]) -> tuple[list[str], dict[Any, int]]:
    """Class names in the order of the category ids, and category id -> class index."""
    try:
        ordered = sorted(categories, key=lambda c: c["id"])
        names = [str(c["name"]) for c in ordered]
    except (KeyError, TypeError):
        raise DatasetError(f"{path}: every category needs an 'id' and a 'name'") from None
    if not names:
        raise DatasetError(f"{path}: 'categories' is empty")
    check_class_names(names, f"{path} 'categories'")
    return names, {c["id"]: i for i, c in enumerate(ordered)}


def _sample(
    root: Path,
    image_dir: Path,
    ann_file: Path,
    image: dict,
    anns: list[dict],
    category_index: dict[Any, int],
    guide: str,
    allow_outside_root: bool,
) -> Sample:
    where = f"{ann_file.name} image id {image['id']}"
    path = resolve_inside(root, image["file_name"], where, "file_name", allow_outside_root, base=image_dir)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path} ({where})")
    labels = tuple(sorted({category_index[a["category_id"]] for a in anns}))
    segments: tuple[Segment, ...] = ()
    boxes: tuple[Box, ...] = ()
    if guide == "masks":
        check_segmentations(anns, f"{ann_file} image id {image['id']}")
        if any(a.get("segmentation") for a in anns):  # an image with no outline at all carries no mask
            segments = tuple(_segment(a, category_index, where) for a in anns)
    elif guide == "boxes":
        boxes = tuple(_box(a, category_index, where) for a in anns)
    return Sample(image=path, labels=labels, origin=where, boxes=boxes, segments=segments)


def _segment(ann: dict, category_index: dict[Any, int], where: str) -> Segment:
    """The instance's outline; an instance without one (empty ``segmentation``) in an image with outlines is its
    box as a crowd region (ignore in every channel): its class is present, so its channel must not read as
    background there."""
    label = category_index[ann["category_id"]]
    if ann.get("segmentation"):
        return Segment(label, ann["segmentation"], bool(ann.get("iscrowd", 0)), ann.get("id"))
    try:
        box = _box(ann, category_index, where)
    except DatasetError:
        raise DatasetError(
            f"{where}: annotation {ann.get('id')} has no outline ('segmentation') and no valid 'bbox' "
            "[x, y, width, height] to leave out of the supervision"
        ) from None
    polygon = [box.x0, box.y0, box.x1, box.y0, box.x1, box.y1, box.x0, box.y1]
    return Segment(label, [polygon], True, ann.get("id"))


def _box(ann: dict, category_index: dict[Any, int], where: str) -> Box:
    """COCO's ``[x, y, width, height]`` -> ``Box(x0, y0, x1, y1)``, a crowd box for an ``iscrowd`` instance."""
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{where}: annotation {ann.get('id')} has no valid 'bbox' [x, y, width, height]") from None
    if not (x >= 0 and y >= 0 and w > 0 and h > 0):
        raise DatasetError(f"{where}: annotation {ann.get('id')} has an invalid bbox {[x, y, w, h]}")
    return Box(category_index[ann["category_id"]], x, y, x + w, y + h, crowd=bool(ann.get("iscrowd", 0)))
