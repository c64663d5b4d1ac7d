"""Decode and validate uploaded images before they reach the model.

Only JPEG and PNG are accepted, recognised by their magic bytes (the declared
content type is not trusted). The size declared in the header (PNG ``IHDR``,
JPEG ``SOFn``) is parsed here and checked against the limits *before* any pixel
is decoded, so a decompression bomb (a few KB that declare gigapixels) costs
nothing. Truncated or corrupt files fail with a 400; a zero or over-limit
dimension with a 422.
"""

from __future__ import annotations

import io
import struct
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from gainx.serve.errors import ApiError

_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
# other image formats, named in the 415 answer
_OTHER = {b"GIF8": "GIF", b"BM": "BMP", b"II*\0": "TIFF", b"MM\0*": "TIFF", b"\0\0\1\0": "ICO", b"8BPS": "PSD"}
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT/JPG/DAC (C4, C8, CC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_LENGTH = frozenset([0x01, *range(0xD0, 0xDA)])  # TEM, RSTn, SOI, EOI: markers without a length field
SUPPORTED_CONTENT_TYPES = ("image/jpeg", "image/png")


def sniff_format(data: bytes) -> str | None:
    """``"JPEG"``, ``"PNG"`` or None, from the first bytes of ``data``."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    return None


def declared_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """``(width, height)`` as the header declares it, or None when the header is cut/garbled."""
    if fmt == "PNG":
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _NO_LENGTH:
            pos += 2
        elif marker in _SOF:
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        else:
            pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return None


def decode_image(data: bytes, max_pixels: int, max_side: int, label: str = "image") -> Image.Image:
    """Return the RGB image encoded in ``data`` (EXIF orientation applied).

    Raises :class:`ApiError`: 400 for empty, non-image, corrupt or truncated
    bytes; 415 for an image format other than JPEG/PNG; 422 for a zero
    dimension, a side over ``max_side`` or more than ``max_pixels`` pixels.
    ``label`` names the upload in messages (e.g. ``"file 'cat.png'"``).
    """
    if not data:
        raise ApiError(400, "empty_image", f"{label} is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        other = next((name for magic, name in _OTHER.items() if data.startswith(magic)), None)
        if other is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            other = "WEBP"
        if other is not None:
            raise ApiError(
                415, "unsupported_image_format", f"{label} is a {other} image: only JPEG and PNG are accepted"
            )
        raise ApiError(400, "not_an_image", f"{label} is not an image: only JPEG and PNG are accepted")
    size = declared_size(data, fmt)
    if size is None:
        raise ApiError(400, "corrupt_image", f"{label} has a {fmt} signature but no readable {fmt} header")
    _check_size(size, max_pixels, max_side, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size was checked above
            image = Image.open(io.BytesIO(data), formats=(fmt,))
            _check_size(image.size, max_pixels, max_side, label)  # PIL's reading of the header, too
            image.load()
    except ApiError:
        raise
    except Image.DecompressionBombError as exc:
        raise ApiError(422, "image_too_large", f"{label}: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ApiError(400, "corrupt_image", f"{label} has a {fmt} signature but cannot be read") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        code = "image_truncated" if "truncated" in str(exc).lower() else "corrupt_image"
        raise ApiError(400, code, f"{label}: cannot decode {fmt} data ({exc})") from exc
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # a corrupt EXIF block does not make the pixels unusable
        pass
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_size(size: tuple[int, int], max_pixels: int, max_side: int, label: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ApiError(422, "image_empty", f"{label} has a zero dimension ({width}x{height})")
    if width > max_side or height > max_side:
        raise ApiError(422, "image_too_large", f"{label} is {width}x{height}; each side must be <= {max_side}")
    if width * height > max_pixels:
        raise ApiError(
            422, "image_too_large", f"{label} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
