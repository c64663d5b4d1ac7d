"""Read images and mask PNGs; every failure names the file and where it was declared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gainx.data.records import DatasetError

_MASK_MODES = ("1", "L", "P")


def _open(path: Path, origin: str, what: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()  # forces a full decode: truncated files fail here
            return im.copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path} ({origin})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot read {what} {path} ({origin}): {exc}") from exc


def read_image(path: Path, origin: str) -> Image.Image:
    """The image at ``path`` as RGB."""
    return _open(path, origin, "image").convert("RGB")


def read_mask(path: Path, origin: str) -> np.ndarray:
    """A single-channel mask PNG (mode 1, L or P: palette indices) as ``(h, w)`` uint8."""
    im = _open(path, origin, "mask")
    if im.mode not in _MASK_MODES:
        raise DatasetError(
            f"mask {path} ({origin}) has mode {im.mode!r}; expected a single-channel "
            f"label map (mode {', '.join(_MASK_MODES)})"
        )
    if im.mode == "1":
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8)
