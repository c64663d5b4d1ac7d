"""The image preprocessing shared by training data, ``gainx attention`` and export checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from gainx.data.decode import to_rgb

if TYPE_CHECKING:
    import torch


def resize_rgb(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized (bilinear, antialiased when shrinking) to ``size = (H, W)``, as ``(H, W, 3)`` uint8.

    An image that is not RGB is first converted by :func:`gainx.data.decode.to_rgb`
    (16-bit grayscale rescaled, not clipped; float images refused).
    """
    h, w = size
    image = to_rgb(image)
    if image.size != (w, h):  # PIL would return a copy for the same size; skip it
        image = image.resize((w, h), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def normalize(pixels: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> float32 ``(3, H, W)`` as ``(x / 255 - mean) / std``.

    ``mean`` and ``std`` are shaped ``(3, 1, 1)``.
    """
    import torch  # here, not at the top: the server imports resize_rgb and never loads torch

    return (torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255 - mean) / std
