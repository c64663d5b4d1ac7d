"""``load_dataset``: detect the layout of a dataset folder and build a split."""

from __future__ import annotations

from pathlib import Path

from gainx.data.dataset import GainDataset
from gainx.data.manifest import MANIFEST, load_manifest
from gainx.data.records import DatasetError
from gainx.data.voc import find_voc_root, load_voc


def load_dataset(
    root: str | Path,
    split: str,
    image_size: int | tuple[int, int] | None = None,
    augment: bool = False,
    *,
    voc_split_source: str | None = None,
    voc_guide: str = "masks",
) -> GainDataset:
    """Load ``split`` of the dataset at ``root``.

    Layouts: a CSV manifest (``root/manifest.csv``) or Pascal VOC 2012 (``root``
    holding ``JPEGImages/`` and ``Annotations/``, or a VOCdevkit root holding
    ``VOC2012/``). ``image_size`` is ``(height, width)`` or an int; by default the
    manifest's ``dataset.json`` value, else 224 (manifest) or 320 (VOC).
    ``voc_split_source`` / ``voc_guide`` apply to VOC only (see :func:`load_voc`).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found (or not a folder): {root}")
    if (root / MANIFEST).is_file():
        if voc_split_source is not None or voc_guide != "masks":
            raise ValueError(f"{root} is a CSV-manifest dataset; voc_split_source / voc_guide apply to VOC only")
        return load_manifest(root, split, image_size, augment)
    voc = find_voc_root(root)
    if voc is not None:
        return load_voc(voc, split, image_size, augment, split_source=voc_split_source, guide=voc_guide)
    raise DatasetError(
        f"{root}: unknown dataset layout; expected {MANIFEST} (CSV manifest) or JPEGImages/ and "
        f"Annotations/ (Pascal VOC 2012), directly or under VOC2012/ or VOCdevkit/VOC2012/"
    )
