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


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """``image`` as 8-bit RGB, as stored (an EXIF orientation tag is not applied); an RGB image is returned as is.

    16-bit grayscale is rescaled ``round(v * 255 / 65535)``; Pillow's own
    conversion clips it instead (every value >= 255 of 65535 becomes white).
    Modes with no unambiguous 8-bit rule raise :class:`DatasetError` naming
    ``name`` and the mode, where Pillow would silently clip or garble them:
    floating point (``F``: 0..1 would turn black), CIELab (``LAB``) and 32-bit
    integers (``I``) with values outside 0..65535.
    """
    if image.mode == "F":
        raise DatasetError(
            f"{name} has mode 'F' (floating-point pixels), which has no single 8-bit scale; "
            "save it with 8- or 16-bit integer pixels"
        )
    if image.mode == "LAB":
        raise DatasetError(
            f"{name} has mode 'LAB' (CIELab colours), which Pillow's RGB conversion garbles; save it as RGB"
        )
    if image.mode in _WIDE_GRAY_MODES:
        wide = np.asarray(image).astype(np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > _WIDE_MAX):
            raise DatasetError(
                f"{name} has mode {image.mode!r} with values in [{wide.min()}, {wide.max()}], beyond 16-bit "
                f"grayscale (0..{_WIDE_MAX}); save it with 8- or 16-bit pixels"
            )
        image = Image.fromarray(((wide * 255 + _WIDE_MAX // 2) // _WIDE_MAX).astype(np.uint8), "L")
    return image if image.mode == "RGB" else image.convert("RGB")


def read_image(path: Path, origin: str) -> Image.Image:
    """The image at ``path`` as 8-bit RGB, as stored (see :func:`to_rgb`)."""
    return to_rgb(_open(path, origin, "image"), f"image {path} ({origin})")


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
