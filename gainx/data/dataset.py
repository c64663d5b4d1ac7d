"""The dataset every gainx layout produces (the trainer's data contract)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gainx.data.decode import read_image, read_mask
from gainx.data.guides import label_map_to_guide, rasterize_boxes, rasterize_segments
from gainx.data.records import IGNORE, IMAGENET_MEAN, IMAGENET_STD, MAX_CLASSES, DatasetError, Sample, as_size
from gainx.data.transforms import normalize, resize_rgb


class GainDataset(Dataset):
    """Images with image-level labels and optional per-class pixel guides.

    ``ds[i]`` is a dict (collates with ``default_collate``):

    * ``image``: float32 ``(3, H, W)``, resized (bilinear) to ``image_size`` and
      normalized ``(x / 255 - mean) / std``;
    * ``labels``: float32 ``(K,)`` multi-hot over ``classes``;
    * ``guide``: uint8 ``(K, H, W)``, 1 where the pixel belongs to class k, 0
      elsewhere, 255 = ignore; all zeros when the sample has no annotation. It is
      the target of the attention-mining / external supervision (paper eq. 7);
    * ``has_guide``: bool scalar tensor; ``index``: ``i``.

    Masks are resized with nearest neighbour, boxes are rasterized at the output
    size. With ``augment=True`` a horizontal flip (p = 0.5, drawn from torch's
    RNG) is applied to image and guide together.

    Args:
        binary_masks: also accept a 0/255 mask on a single-label sample as
            "255 = that label" (CSV-manifest convention, see docs/data.md).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        multilabel: bool,
        image_size: int | tuple[int, int],
        augment: bool = False,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        binary_masks: bool = False,
    ) -> None:
        if not samples:
            raise DatasetError("a GainDataset needs at least one sample")
        if not classes:
            raise DatasetError("a GainDataset needs at least one class")
        if len(classes) > MAX_CLASSES:
            raise DatasetError(f"at most {MAX_CLASSES} classes fit a uint8 label map, got {len(classes)}")
        self.samples = list(samples)
        self.classes = list(classes)
        self.multilabel = bool(multilabel)
        self.image_size = as_size(image_size)
        self.augment = augment
        self.binary_masks = binary_masks
        self.num_guided = sum(s.has_guide for s in self.samples)
        self.set_normalization(mean, std)

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Normalize images as ``(x / 255 - mean) / std`` from now on (three values each)."""
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"normalization needs 3 means and 3 positive stds, got mean={mean}, std={std}")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self._mean = torch.tensor(self.mean).view(3, 1, 1)
        self._std = torch.tensor(self.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"GainDataset({len(self)} images, {len(self.classes)} classes, multilabel={self.multilabel}, "
            f"image_size={self.image_size}, guided={self.num_guided}, augment={self.augment})"
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        s = self.samples[index]
        h, w = self.image_size
        im = read_image(s.image, s.origin)
        source_size = (im.height, im.width)
        image = normalize(resize_rgb(im, (h, w)), self._mean, self._std)
        guide = torch.from_numpy(self._guide(s, source_size))
        labels = torch.zeros(len(self.classes), dtype=torch.float32)
        labels[list(s.labels)] = 1.0
        if self.augment and torch.rand(()) < 0.5:
            image, guide = image.flip(-1), guide.flip(-1)
        return {
            "image": image.contiguous(),
            "labels": labels,
            "guide": guide.contiguous(),
            "has_guide": torch.tensor(s.has_guide),
            "index": index,
        }

    def _guide(self, s: Sample, source_size: tuple[int, int]) -> np.ndarray:
        k, size = len(self.classes), self.image_size
        if s.mask is not None:
            label_map = self._label_map(s, source_size)
            resized = np.asarray(Image.fromarray(label_map).resize(size[::-1], Image.NEAREST))
            return label_map_to_guide(resized, k)
        if s.boxes:
            for b in s.boxes:
                if b.x1 > source_size[1] or b.y1 > source_size[0]:
                    raise DatasetError(
                        f"box {self.classes[b.label]}:{b.x0:g} {b.y0:g} {b.x1:g} {b.y1:g} ({s.origin}) lies "
                        f"outside image {s.image} of size {source_size[1]}x{source_size[0]} (width x height)"
                    )
            return rasterize_boxes(s.boxes, k, source_size, size)
        if s.segments:
            return rasterize_segments(s.segments, k, source_size, size, s.origin)
        return np.zeros((k, *size), dtype=np.uint8)

    def _label_map(self, s: Sample, source_size: tuple[int, int]) -> np.ndarray:
        """Read ``s.mask`` and check it against the image and the sample's labels."""
        assert s.mask is not None
        m = read_mask(s.mask, s.origin)
        if m.shape != source_size:
            raise DatasetError(
                f"mask {s.mask} ({s.origin}) is {m.shape[1]}x{m.shape[0]} but image {s.image} is "
                f"{source_size[1]}x{source_size[0]} (width x height)"
            )
        counts = np.bincount(m.ravel(), minlength=256)
        present = set(np.flatnonzero(counts).tolist()) - {0, IGNORE}
        if self.binary_masks and len(s.labels) == 1 and present == set():
            return np.where(m == IGNORE, s.labels[0] + 1, 0).astype(np.uint8)
        bad = sorted(v for v in present if v > len(self.classes))
        if bad:
            raise DatasetError(
                f"mask {s.mask} ({s.origin}) has values {bad} outside 0..{len(self.classes)} and 255 "
                f"(0 = background, k+1 = class k, 255 = ignore)"
            )
        extra = sorted(v - 1 for v in present if v - 1 not in s.labels)
        if extra:
            raise DatasetError(
                f"mask {s.mask} ({s.origin}) marks classes {[self.classes[c] for c in extra]} (values "
                f"{[c + 1 for c in extra]}) that are not among the image's labels "
                f"{[self.classes[c] for c in s.labels]}"
            )
        return m
