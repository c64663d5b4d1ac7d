"""gainx data layer: one dataset contract over several on-disk layouts.

``load_dataset(root, split)`` detects a CSV manifest or a Pascal VOC 2012 tree
and returns a :class:`GainDataset` (see docs/data.md); ``write_decoy`` writes
the decoy-digits benchmark.
"""

from gainx.data.cooccur import write_cooccur
from gainx.data.dataset import GainDataset
from gainx.data.decoy import DECOY_COLORS, write_decoy
from gainx.data.load import load_dataset
from gainx.data.shapes import write_shapes
from gainx.data.records import IGNORE, IMAGENET_MEAN, IMAGENET_STD, Box, DatasetError, Sample
from gainx.data.voc import VOC_CLASSES

__all__ = [
    "DECOY_COLORS",
    "IGNORE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VOC_CLASSES",
    "Box",
    "DatasetError",
    "GainDataset",
    "Sample",
    "load_dataset",
    "write_cooccur",
    "write_decoy",
    "write_shapes",
]
