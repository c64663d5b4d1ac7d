"""Layout (d): torchvision's ImageFolder, one per split.

``<split>/<class>/<image>`` (single-label; the classes are the sorted class folder names over all
splits, as ``torchvision.datasets.ImageFolder`` orders them) with optional masks at
``masks/<split>/<class>/<image stem>.png``: a label map or a binary 0/255 mask as in the CSV manifest.
"""

from __future__ import annotations

from pathlib import Path

from gainx.data.dataset import GainDataset
from gainx.data.paths import resolve_inside
from gainx.data.records import DatasetError, Sample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MASKS = "masks"
DEFAULT_IMAGE_SIZE = 224


def imagefolder_splits(root: Path) -> list[str]:
    """The split folders of ``root``: folders (not ``masks/``) with a class folder holding an image."""
    return sorted(
        split.name for split in _folders(root) if split.name != MASKS and any(_images(cls) for cls in _folders(split))
    )


def load_imagefolder(
    root: Path,
    split: str,
    image_size: int | tuple[int, int] | None = None,
    augment: bool = False,
    allow_outside_root: bool = False,
) -> GainDataset:
    """Build ``split`` of the ImageFolder data set at ``root`` (see the module docstring)."""
    splits = imagefolder_splits(root)
    if split not in splits:
        raise DatasetError(f"{root}: no split folder {split!r} with class folders of images; splits present: {splits}")
    classes = sorted({cls.name for s in splits for cls in _folders(root / s)})
    samples = []
    for cls in _folders(root / split):
        label = classes.index(cls.name)
        for image in _images(cls):
            where = f"{split}/{cls.name}/{image.name}"
            resolve_inside(root, str(image.relative_to(root)), where, "image", allow_outside_root)
            mask = root / MASKS / split / cls.name / f"{image.stem}.png"
            if mask.is_file():
                resolve_inside(root, str(mask.relative_to(root)), where, "mask", allow_outside_root)
            samples.append(Sample(image=image, labels=(label,), origin=where, mask=mask if mask.is_file() else None))
    return GainDataset(
        samples,
        classes,
        False,
        image_size if image_size is not None else DEFAULT_IMAGE_SIZE,
        augment,
        binary_masks=True,
    )


def _folders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) if path.is_dir() else []


def _images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )
