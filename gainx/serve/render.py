"""Turn model outputs into what a client can use: PNG heatmaps, overlays, raw arrays, class probabilities.

Attention values are in [0, 1] (the normalized Grad-CAM map of eq. 1-2, as
the exported graph returns it). Heatmaps and overlays are those of
:mod:`gainx.viz` (jet colours, 50 % blend); raw maps are resized bilinearly
with ``align_corners=False``, the resampling of
:func:`gainx.ops.upsample` (``torch.nn.functional.interpolate``)
used everywhere else in gainx, here in numpy so that the server does not
import torch at start-up.
"""

from __future__ import annotations

import base64
import io
from functools import cache

import numpy as np
from PIL import Image


def encode_png(image: Image.Image) -> str:
    """Base64 text of the PNG encoding of ``image`` (fast compression)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@cache
def _palette() -> bytes:
    """The colour :func:`gainx.viz.heatmap` gives each of its 256 bins (bin i holds [i/256, (i+1)/256))."""
    from gainx.viz import heatmap

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
    from gainx.viz import overlay

    if image.shape[1:] != attention.shape:
        raise ValueError(f"overlay: image {image.shape[1:]} and attention {attention.shape} differ in size")
    rgb = np.round(np.clip(image.transpose(1, 2, 0), 0.0, 1.0) * 255.0).astype(np.uint8)
    return encode_png(Image.fromarray(overlay(rgb, attention)))


def _source_index(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two input indices and the weight of the second, as torch computes them.

    With ``align_corners=False`` output index ``i`` samples input position
    ``x = max((i + 0.5) * size_in / size_out - 0.5, 0)`` (float32 arithmetic,
    like torch's CPU kernel); its neighbours are ``floor(x)`` and
    ``min(floor(x) + 1, size_in - 1)`` with weights ``1 - (x - floor(x))`` and
    ``x - floor(x)``.
    """
    scale = np.float32(size_in) / np.float32(size_out)
    x = np.maximum(scale * (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    low = np.minimum(x.astype(np.int64), size_in - 1)
    return low, np.minimum(low + 1, size_in - 1), (x - low).astype(np.float32)


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(K, h, w)`` float32 maps resized to ``size`` = (H, W).

    Bilinear with ``align_corners=False``, no antialiasing: the result of
    ``torch.nn.functional.interpolate(maps[None], size, mode="bilinear", align_corners=False)``
    (separable: rows, then columns; equal to it within float32 rounding).
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    maps = np.asarray(maps, dtype=np.float32)
    top, bottom, dy = _source_index(maps.shape[-2], size[0])
    left, right, dx = _source_index(maps.shape[-1], size[1])
    rows = maps[:, top, :] * (1 - dy)[:, None] + maps[:, bottom, :] * dy[:, None]
    return rows[:, :, left] * (1 - dx) + rows[:, :, right] * dx


def probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Class probabilities of one image's ``(C,)`` logits, as ``gainx attention`` reports them.

    Softmax over the classes, ``exp(z_c - max z) / sum_j exp(z_j - max z)``, or for a multi-label model
    each class's own sigmoid ``1 / (1 + exp(-z_c))``; computed in float64.
    """
    z = np.asarray(logits, dtype=np.float64)
    if multilabel:
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # the sigmoid, without overflow for large |z|
    e = np.exp(z - z.max())
    return e / e.sum()
