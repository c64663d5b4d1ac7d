"""``load_dataset``: detect the layout of a dataset folder and build a split."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gainx.data.coco import is_coco, load_coco
from gainx.data.dataset import GainDataset
from gainx.data.imagefolder import imagefolder_splits, load_imagefolder
from gainx.data.manifest import MANIFEST, load_manifest
from gainx.data.records import DatasetError
from gainx.data.voc import find_voc_root, load_voc

GUIDED_LAYOUTS = ("voc", "coco")  # the layouts whose guide= picks masks, boxes or none


def load_dataset(
    root: str | Path,
    split: str,
    image_size: int | tuple[int, int] | None = None,
    augment: bool = False,
    *,
    voc_split_source: str | None = None,
    guide: str | None = None,
    allow_outside_root: bool = False,
) -> GainDataset:
    """Load ``split`` of the dataset at ``root``, detecting its layout (first match):

    1. a CSV manifest: ``root/manifest.csv``;
    2. Pascal VOC: ``JPEGImages/`` and ``Annotations/`` in ``root``, ``root/VOC2012`` or
       ``root/VOCdevkit/VOC2012``;
    3. COCO instances: ``root/annotations/instances_<split>.json`` or ``root/<split>/_annotations.coco.json``;
    4. torchvision ImageFolder per split: ``root/<split>/<class>/<image>``.

    ``image_size`` is ``(height, width)`` or an int; by default the manifest's ``dataset.json`` value,
    else 224 (manifest, ImageFolder) or 320 (VOC, COCO). ``guide`` (VOC and COCO): ``"masks"`` (default),
    ``"boxes"`` or ``"none"``; ``voc_split_source``: VOC only (see :func:`load_voc`). Files named by the
    index must lie inside ``root`` (no ``..``, absolute paths or symlinks out) unless ``allow_outside_root``.
    """
    root = _folder(root)
    voc = find_voc_root(root)
    layout = _layout(root, voc)
    if voc_split_source is not None and layout != "voc":
        raise ValueError(f"{root} is a {layout} dataset; voc_split_source applies to VOC only")
    if guide is not None and layout not in GUIDED_LAYOUTS:
        raise ValueError(f"{root} is a {layout} dataset; guide= applies to the VOC and COCO layouts only")
    if layout == "manifest":
        return load_manifest(root, split, image_size, augment, allow_outside_root=allow_outside_root)
    if layout == "voc":
        assert voc is not None
        return load_voc(
            voc,
            split,
            image_size,
            augment,
            split_source=voc_split_source,
            guide=guide or "masks",
            allow_outside_root=allow_outside_root,
        )
    if layout == "coco":
        return load_coco(
            root, split, image_size, augment, guide=guide or "masks", allow_outside_root=allow_outside_root
        )
    return load_imagefolder(root, split, image_size, augment, allow_outside_root=allow_outside_root)


def load_split_for_model(root: str | Path, split: str, meta: Mapping[str, Any], **kwargs: Any) -> GainDataset:
    """``split`` of ``root`` as the model of ``meta`` (a checkpoint's metadata, :func:`gainx.models.load_model`)
    takes its images: at its input size, normalized with its mean and std (EfficientNet-Lite0's
    ``(x - 127) / 128``, not ImageNet's, for instance). ``kwargs`` go to :func:`load_dataset`."""
    dataset = load_dataset(root, split, image_size=tuple(meta["image_size"]), **kwargs)
    dataset.set_normalization(meta["mean"], meta["std"])
    return dataset


def dataset_layout(root: str | Path) -> str:
    """The layout :func:`load_dataset` reads at ``root``: ``manifest``, ``voc``, ``coco`` or ``imagefolder``."""
    root = _folder(root)
    return _layout(root, find_voc_root(root))


def _folder(root: str | Path) -> Path:
    """``root`` as a path, refused when it is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found (or not a folder): {root}")
    return root


def unused_boxes_hint(root: str | Path, split: str, guide: str | None, allow_outside_root: bool = False) -> str:
    """A sentence for an error about missing guides: how many images of ``split`` carry boxes that
    ``guide`` (VOC and COCO; default ``"masks"``) leaves unused, and the flag that uses them; else ``""``."""
    if guide == "boxes" or dataset_layout(root) not in GUIDED_LAYOUTS:
        return ""
    with_boxes = load_dataset(root, split, guide="boxes", allow_outside_root=allow_outside_root).num_guided
    if not with_boxes:
        return ""
    return f"; {with_boxes} of its images have boxes, unused with guide {guide or 'masks'!r}: use --guide boxes"


def _layout(root: Path, voc: Path | None) -> str:
    if (root / MANIFEST).is_file():
        return "manifest"
    if voc is not None:
        return "voc"
    if is_coco(root):
        return "coco"
    if imagefolder_splits(root):
        return "imagefolder"
    raise DatasetError(
        f"{root}: unknown dataset layout; expected {MANIFEST} (CSV manifest), JPEGImages/ and Annotations/ "
        f"(Pascal VOC, also under VOC2012/ or VOCdevkit/VOC2012/), annotations/instances_<split>.json or "
        f"<split>/_annotations.coco.json (COCO), or <split>/<class>/<images> (ImageFolder)"
    )
