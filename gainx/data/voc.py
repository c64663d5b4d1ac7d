"""Layout (a): Pascal VOC 2012.

``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` (image-level labels = the set
of object names), ``SegmentationClass/<id>.png`` (palette PNG: index k+1 = class
k, 0 background, 255 object border -> ignore) for the images that have one, and
split lists ``ImageSets/Main/<split>.txt`` or ``ImageSets/Segmentation/<split>.txt``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from gainx.data.dataset import GainDataset
from gainx.data.records import Box, DatasetError, Sample

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
DEFAULT_IMAGE_SIZE = 320
SPLIT_SOURCES = {"main": "Main", "segmentation": "Segmentation"}
GUIDES = ("masks", "boxes", "none")


def find_voc_root(root: Path) -> Path | None:
    """The folder holding ``JPEGImages/`` and ``Annotations/``: ``root`` itself,
    ``root/VOC2012`` (a VOCdevkit folder) or ``root/VOCdevkit/VOC2012``; else None."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "Annotations").is_dir():
            return candidate
    return None


def load_voc(
    root: Path,
    split: str,
    image_size: int | tuple[int, int] | None = None,
    augment: bool = False,
    split_source: str | None = None,
    guide: str = "masks",
) -> GainDataset:
    """Build ``split`` of the VOC tree at ``root`` (as returned by :func:`find_voc_root`).

    Args:
        split_source: ``"main"`` (ImageSets/Main) or ``"segmentation"``
            (ImageSets/Segmentation); default: Main if it lists ``split``.
        guide: ``"masks"`` (SegmentationClass PNGs where present), ``"boxes"``
            (object boxes from the XML) or ``"none"``.
    """
    if guide not in GUIDES:
        raise ValueError(f"voc_guide must be one of {GUIDES}, got {guide!r}")
    ids_file = _split_file(root, split, split_source)
    try:
        text = ids_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read split list {ids_file}: {exc}") from exc
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{ids_file}: split {split!r} lists no images")
    samples = [_sample(root, ids_file, i, guide) for i in ids]
    return GainDataset(
        samples, VOC_CLASSES, True, image_size if image_size is not None else DEFAULT_IMAGE_SIZE, augment
    )


def _split_file(root: Path, split: str, source: str | None) -> Path:
    if source is not None and source not in SPLIT_SOURCES:
        raise ValueError(f"voc_split_source must be one of {sorted(SPLIT_SOURCES)} or None, got {source!r}")
    order = [source] if source is not None else list(SPLIT_SOURCES)
    for name in order:
        path = root / "ImageSets" / SPLIT_SOURCES[name] / f"{split}.txt"
        if path.is_file():
            return path
    available = sorted(
        f"{name}:{p.stem}"
        for name in order
        for p in (root / "ImageSets" / SPLIT_SOURCES[name]).glob("*.txt")
        if "_" not in p.stem
    )
    folders = ",".join(SPLIT_SOURCES[n] for n in order)
    raise DatasetError(f"{root}: no split list for {split!r} in ImageSets/{{{folders}}}; available: {available}")


def _sample(root: Path, ids_file: Path, image_id: str, guide: str) -> Sample:
    where = f"{ids_file.name} id {image_id}"
    image = root / "JPEGImages" / f"{image_id}.jpg"
    if not image.is_file():
        raise FileNotFoundError(f"image not found: {image} ({where})")
    xml = root / "Annotations" / f"{image_id}.xml"
    if not xml.is_file():
        raise FileNotFoundError(f"annotation not found: {xml} ({where})")
    boxes = _read_objects(xml)
    labels = tuple(sorted({b.label for b in boxes}))
    mask = root / "SegmentationClass" / f"{image_id}.png"
    return Sample(
        image=image,
        labels=labels,
        origin=f"{where}, {xml.name}",
        mask=mask if guide == "masks" and mask.is_file() else None,
        boxes=tuple(boxes) if guide == "boxes" else (),
    )


def _read_objects(xml: Path) -> list[Box]:
    """One box per ``<object>``; VOC's 1-based inclusive corners become ``[xmin-1, xmax)``."""
    try:
        tree = ET.parse(xml)
    except (OSError, ET.ParseError) as exc:
        raise DatasetError(f"cannot read annotation {xml}: {exc}") from exc
    boxes = []
    for n, obj in enumerate(tree.getroot().iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise DatasetError(f"{xml}: object {n} has unknown class {name!r}; VOC classes are {list(VOC_CLASSES)}")
        bb = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr, arg-type]
        except (AttributeError, TypeError, ValueError):
            raise DatasetError(f"{xml}: object {n} ({name}) has a missing or malformed <bndbox>") from None
        if not (1 <= xmin <= xmax and 1 <= ymin <= ymax):
            raise DatasetError(f"{xml}: object {n} ({name}) has an invalid box {xmin:g},{ymin:g},{xmax:g},{ymax:g}")
        boxes.append(Box(VOC_CLASSES.index(name), xmin - 1, ymin - 1, xmax, ymax))
    return boxes
