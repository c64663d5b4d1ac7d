"""Image bytes for the serve tests: encoded noise, PNG/JPEG headers that lie about their size, PNG decoding."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode)


def png_with_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares ``width`` x ``height`` (pixel data far too short)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def jpeg_with_header(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose SOF0 segment is patched to declare ``width`` x ``height``."""
    data = bytearray(encode(Image.new("RGB", (8, 8), (10, 200, 30)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def image_bytes(seed: int, size: tuple[int, int] = (40, 28), fmt: str = "PNG") -> bytes:
    """Random RGB noise of ``size`` = (width, height), encoded as ``fmt``."""
    return encode(noise(size, seed=seed), fmt)


def png_pixels(text: str) -> np.ndarray:
    """The RGB pixels of a base64 PNG (as the server returns heatmaps)."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text)), formats=("PNG",)).convert("RGB"))
