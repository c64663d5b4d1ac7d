"""Layout (a): Pascal VOC (VOC 2012 itself, or the "Pascal VOC XML" of labelImg, CVAT, Roboflow).

``JPEGImages/<id>.jpg`` (or another image extension), ``Annotations/<id>.xml`` (image-level labels =
the set of object names), ``SegmentationClass/<id>.png`` (palette PNG: index k+1 = class k, 0
background, 255 object border -> ignore) for the images that have one, and split lists
``ImageSets/Main/<split>.txt`` or ``ImageSets/Segmentation/<split>.txt``.

Classes: ``classes.txt`` (in the root or in ``Annotations/``, labelImg) or CVAT's ``labelmap.txt``
when present; else the 20 VOC 2012 names when every annotation uses them; else the sorted object
names of all annotations.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from gainx.data.dataset import GainDataset
from gainx.data.manifest import read_classes
from gainx.data.names import check_class_names
from gainx.data.paths import resolve_inside
from gainx.data.records import Box, DatasetError, Sample

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
DEFAULT_IMAGE_SIZE = 320
SPLIT_SOURCES = {"main": "Main", "segmentation": "Segmentation"}
GUIDES = ("masks", "boxes", "none")
CLASS_FILES = ("classes.txt", "Annotations/classes.txt", "labelmap.txt")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".webp")


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
    allow_outside_root: bool = False,
) -> GainDataset:
    """Build ``split`` of the VOC tree at ``root`` (as returned by :func:`find_voc_root`).

    Args:
        split_source: ``"main"`` (ImageSets/Main) or ``"segmentation"``
            (ImageSets/Segmentation); default: Main if it lists ``split``.
        guide: ``"masks"`` (SegmentationClass PNGs where present), ``"boxes"``
            (object boxes from the XML) or ``"none"``.
        allow_outside_root: accept ids whose image, annotation or mask file lies outside ``root``
            (an id holding ``..``, an absolute id, a symlink out); refused by default, naming the
            split list, its line and the path.
    """
    if guide not in GUIDES:
        raise ValueError(f"guide must be one of {GUIDES}, got {guide!r}")
    ids_file = _split_file(root, split, split_source)
    try:
        text = ids_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read split list {ids_file}: {exc}") from exc
    ids = [(n, line.split()[0]) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not ids:
        raise DatasetError(f"{ids_file}: split {split!r} lists no images")
    classes, source = voc_classes(root)
    index = {name: i for i, name in enumerate(classes)}
    files = _Files(root, ids_file, allow_outside_root)
    samples = [_sample(files, line, image_id, guide, index, source) for line, image_id in ids]
    return GainDataset(samples, classes, True, image_size if image_size is not None else DEFAULT_IMAGE_SIZE, augment)


def voc_classes(root: Path) -> tuple[list[str], str]:
    """The class list of the VOC tree at ``root`` and where it came from (for error messages)."""
    for name in CLASS_FILES:
        path = root / name
        if path.is_file():
            return (_read_labelmap(path) if path.name == "labelmap.txt" else read_classes(path)), str(path)
    # the names only: a box is checked when a split that lists its file is read
    names = {name for xml in sorted((root / "Annotations").glob("*.xml")) for name, _ in _named_objects(xml)}
    if names <= set(VOC_CLASSES):
        return list(VOC_CLASSES), "the VOC 2012 classes"
    return sorted(names), f"the object names in {root / 'Annotations'}"


def _read_labelmap(path: Path) -> list[str]:
    """CVAT's ``labelmap.txt`` (``name:r,g,b:parts:actions`` per line, ``#`` comments); a leading
    ``background`` entry is palette index 0, not a class."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    names = [line.split(":")[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if names and names[0] == "background":
        names = names[1:]
    if not names or any(not n for n in names):
        raise DatasetError(f"{path}: expected one 'name:r,g,b:parts:actions' line per class")
    check_class_names(names, str(path))
    return names


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


@dataclass(frozen=True)
class _Files:
    """Where the files of one split list's ids are, and whether they may lie outside ``root``."""

    root: Path
    ids_file: Path
    allow_outside_root: bool

    def find(self, folder: str, name: str, line: int) -> Path:
        """``root/folder/name``, refused (naming the split list and ``line``) when it leaves ``root``."""
        where = f"{self.ids_file} line {line}"
        return resolve_inside(self.root, name, where, f"{folder} file", self.allow_outside_root, self.root / folder)


def _sample(files: _Files, line: int, image_id: str, guide: str, index: dict[str, int], source: str) -> Sample:
    where = f"{files.ids_file.name} id {image_id}"
    image = _image_file(files, line, image_id, where)
    xml = files.find("Annotations", f"{image_id}.xml", line)
    if not xml.is_file():
        raise FileNotFoundError(f"annotation not found: {xml} ({where})")
    boxes = []
    for name, n, (xmin, ymin, xmax, ymax) in _read_objects(xml):
        if name not in index:
            raise DatasetError(
                f"{xml}: object {n} has unknown class {name!r}; classes (from {source}) are {list(index)}"
            )
        boxes.append(Box(index[name], xmin - 1, ymin - 1, xmax, ymax))
    labels = tuple(sorted({b.label for b in boxes}))
    mask = files.find("SegmentationClass", f"{image_id}.png", line) if guide == "masks" else None
    return Sample(
        image=image,
        labels=labels,
        origin=f"{where}, {xml.name}",
        mask=mask if mask is not None and mask.is_file() else None,
        boxes=tuple(boxes) if guide == "boxes" else (),
    )


def _image_file(files: _Files, line: int, image_id: str, where: str) -> Path:
    """``JPEGImages/<id>.jpg``, or the same stem with another image extension."""
    for ext in IMAGE_EXTENSIONS:
        image = files.find("JPEGImages", f"{image_id}{ext}", line)
        if image.is_file():
            return image
    folder = files.root / "JPEGImages"
    raise FileNotFoundError(f"image not found: {folder / image_id}.jpg (or .jpeg, .png) ({where})")


def _named_objects(xml: Path) -> list[tuple[str, ET.Element]]:
    """``(name, element)`` per ``<object>`` of the annotation file ``xml`` (its boxes are not read)."""
    try:
        tree = ET.parse(xml)
    except (OSError, ET.ParseError) as exc:
        raise DatasetError(f"cannot read annotation {xml}: {exc}") from exc
    objects = []
    for n, obj in enumerate(tree.getroot().iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(f"{xml}: object {n} has no <name>")
        objects.append((name, obj))
    return objects


def _read_objects(xml: Path) -> list[tuple[str, int, tuple[float, float, float, float]]]:
    """``(name, object number, (xmin, ymin, xmax, ymax))`` per ``<object>`` in VOC's 1-based inclusive
    corners (a box becomes ``[xmin-1, xmax)`` in :class:`Box`)."""
    boxes = []
    for n, (name, obj) in enumerate(_named_objects(xml)):
        bb = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr, arg-type]
        except (AttributeError, TypeError, ValueError):
            raise DatasetError(f"{xml}: object {n} ({name}) has a missing or malformed <bndbox>") from None
        if not (1 <= xmin <= xmax and 1 <= ymin <= ymax):
            raise DatasetError(f"{xml}: object {n} ({name}) has an invalid box {xmin:g},{ymin:g},{xmax:g},{ymax:g}")
        boxes.append((name, n, (xmin, ymin, xmax, ymax)))
    return boxes
