"""Turn attention maps into what a client can use: PNG heatmaps, overlays, raw arrays.

Attention values are in [0, 1] (the normalized Grad-CAM map of eq. 1-2, as
the exported graph returns it). Heatmaps and overlays are those of
:mod:`gainx.viz` (jet colours, 50 % blend); raw maps are resized with
:func:`gainx.ops.upsample` (bilinear, ``align_corners=False``),
the resampling used everywhere else in gainx.
"""

from __future__ import annotations

import base64
import io
from functools import cache

import numpy as np
import torch
from PIL import Image

from gainx.ops import upsample
from gainx.viz import heatmap, overlay


def encode_png(image: Image.Image) -> str:
    """Base64 text of the PNG encoding of ``image`` (fast compression)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@cache
def _palette() -> bytes:
    """The colour :func:`gainx.viz.heatmap` gives each of its 256 bins (bin i holds [i/256, (i+1)/256))."""
    return heatmap((np.arange(256) + 0.5) / 256).tobytes()


def heatmap_png(attention: np.ndarray) -> str:
    """Base64 PNG of the jet heatmap of an ``(H, W)`` map, pixel-identical to :func:`gainx.viz.heatmap`.

    Encoded as a palette PNG (one byte per pixel: the colormap bin
    ``min(floor(256 a), 255)``, as matplotlib bins it), about 10x faster to
    produce than the RGB image and smaller.
    """
    # fmax/fmin skip NaN: NaN -> bin 0, +inf -> 255, -inf -> 0 (as nan_to_num + clip would), in two passes
    bins = np.fmin(np.fmax(attention.astype(np.float32, copy=False) * np.float32(256), 0), 255).astype(np.uint8)
    image = Image.fromarray(bins)
    image.putpalette(_palette())
    return encode_png(image)


def overlay_png(image: np.ndarray, attention: np.ndarray) -> str:
    """Base64 PNG of the heatmap blended over ``image``.

    ``image`` is the ``(3, H, W)`` float array in [0, 1] the model saw (after
    preprocessing), so map and image are aligned pixel for pixel.
    """
    if image.shape[1:] != attention.shape:
        raise ValueError(f"overlay: image {image.shape[1:]} and attention {attention.shape} differ in size")
    rgb = np.round(np.clip(image.transpose(1, 2, 0), 0.0, 1.0) * 255.0).astype(np.uint8)
    return encode_png(Image.fromarray(overlay(rgb, attention)))


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(K, h, w)`` float32 maps resized to ``size`` = (H, W) (bilinear, align_corners=False)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    with torch.no_grad():
        return upsample(torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)), size).numpy()
