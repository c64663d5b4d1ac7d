"""Read images and mask PNGs; every failure names the file and where it was declared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from gainx.data.records import DatasetError

_MASK_MODES = ("1", "L", "P")
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grayscale PNG / TIFF (old Pillow: "I")
_WIDE_MAX = 65535


def _open(path: Path, origin: str, what: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()  # forces a full decode: truncated files fail here
            return im.copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path} ({origin})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot read {what} {path} ({origin}): {exc}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. 16-bit grayscale is rescaled ``round(v * 255 / 65535)``;
    Pillow's own conversion clips it instead (every value >= 255 of 65535 becomes white)."""
    if image.mode in _WIDE_GRAY_MODES:
        wide = np.clip(np.asarray(image).astype(np.int64), 0, _WIDE_MAX)
        image = Image.fromarray(((wide * 255 + _WIDE_MAX // 2) // _WIDE_MAX).astype(np.uint8), "L")
    return image.convert("RGB")


def read_image(path: Path, origin: str) -> Image.Image:
    """The image at ``path`` as 8-bit RGB (see :func:`to_rgb`)."""
    return to_rgb(_open(path, origin, "image"))


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
