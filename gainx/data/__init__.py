"""gainx data layer: one dataset contract over several on-disk layouts.

``load_dataset(root, split)`` detects a CSV manifest, a Pascal VOC tree, COCO
instances JSON or a torchvision ImageFolder per split and returns a
:class:`GainDataset` (see docs/data.md). The generated benchmarks
(decoy digits, co-occurrence, shapes) are in :mod:`gainx.data.synthetic`.

The names below are imported on first use (PEP 562): the server's preprocessing
(:mod:`gainx.data.transforms`) lives in this package, and importing it must not
load torch through the dataset classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gainx._lazy import lazy_names

_LAZY = {
    "GainDataset": "gainx.data.dataset",
    "load_dataset": "gainx.data.load",
    "load_split_for_model": "gainx.data.load",
    "write_manifest": "gainx.data.manifest",
    "IGNORE": "gainx.data.records",
    "IMAGENET_MEAN": "gainx.data.records",
    "IMAGENET_STD": "gainx.data.records",
    "Box": "gainx.data.records",
    "DatasetError": "gainx.data.records",
    "Sample": "gainx.data.records",
    "VOC_CLASSES": "gainx.data.voc",
}
__all__ = [
    "IGNORE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VOC_CLASSES",
    "Box",
    "DatasetError",
    "GainDataset",
    "Sample",
    "load_dataset",
    "write_manifest",
]

if TYPE_CHECKING:
    from gainx.data.dataset import GainDataset
    from gainx.data.load import load_dataset
    from gainx.data.manifest import write_manifest
    from gainx.data.records import IGNORE, IMAGENET_MEAN, IMAGENET_STD, Box, DatasetError, Sample
    from gainx.data.voc import VOC_CLASSES


__getattr__ = lazy_names(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
