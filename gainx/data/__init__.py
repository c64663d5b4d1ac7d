"""gainx data layer: one dataset contract over several on-disk layouts.

``load_dataset(root, split)`` detects a CSV manifest, a Pascal VOC tree, COCO
instances JSON or a torchvision ImageFolder per split and returns a
:class:`GainDataset` (see docs/data.md). The generated benchmarks
(decoy digits, co-occurrence, shapes) are in :mod:`gainx.data.synthetic`.
"""

from gainx.data.dataset import GainDataset
from gainx.data.load import load_dataset
from gainx.data.manifest import write_manifest
from gainx.data.records import IGNORE, IMAGENET_MEAN, IMAGENET_STD, Box, DatasetError, Sample
from gainx.data.voc import VOC_CLASSES

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
