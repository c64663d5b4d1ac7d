"""Decode and validate uploaded images before they reach the model.

Only JPEG and PNG are accepted, recognised by their magic bytes (the declared
content type is not trusted). :func:`open_image` reads only the header (PIL's
lazy ``Image.open``) and checks the declared size against the limits *before*
any pixel is decoded, so a decompression bomb (a few KB that declare
gigapixels) costs nothing; :func:`load_rgb` then decodes. Truncated, corrupt
or zero-sized files fail with a 400; an over-limit size with a 422. Pixels
are converted as training reads them (:func:`gainx.data.decode.to_rgb`): as
stored, with no EXIF orientation applied, and 16-bit grayscale PNGs scaled to
8 bits (``round(v * 255 / 65535)``), not clipped as PIL's ``convert("RGB")`` would.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from gainx.data.decode import to_rgb
from gainx.data.records import DatasetError
from gainx.serve.errors import ApiError

_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
# other image formats, named in the 415 answer
_OTHER = {b"GIF8": "GIF", b"BM": "BMP", b"II*\0": "TIFF", b"MM\0*": "TIFF", b"\0\0\1\0": "ICO", b"8BPS": "PSD"}
SUPPORTED_CONTENT_TYPES = ("image/jpeg", "image/png")


def sniff_format(data: bytes) -> str | None:
    """``"JPEG"``, ``"PNG"`` or None, from the first bytes of ``data``."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    return None


def open_image(data: bytes, max_pixels: int, max_side: int, label: str = "image") -> Image.Image:
    """The image in ``data``, opened lazily (header read, no pixel decoded) and checked against the limits.

    Raises :class:`ApiError`: 400 for empty, non-image or unreadable-header
    bytes; 415 for an image format other than JPEG/PNG; 422 for a side over
    ``max_side`` or more than ``max_pixels`` pixels.
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limits below are the server's
            image = Image.open(io.BytesIO(data), formats=(fmt,))
    except Image.DecompressionBombError as exc:
        raise ApiError(422, "image_too_large", f"{label}: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ApiError(
            400,
            "corrupt_image",
            f"{label} has a {fmt} signature but no readable {fmt} header (cut short, garbled or declaring a zero size)",
        ) from exc
    _check_size(image.size, max_pixels, max_side, label)
    return image


def load_rgb(image: Image.Image, label: str = "image") -> Image.Image:
    """Decode an image from :func:`open_image` to RGB as stored (:func:`gainx.data.decode.to_rgb`, the training
    decode); 400 when the data is bad."""
    fmt = image.format
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        code = "image_truncated" if "truncated" in str(exc).lower() else "corrupt_image"
        raise ApiError(400, code, f"{label}: cannot decode {fmt} data ({exc})") from exc
    try:
        return to_rgb(image, label)
    except DatasetError as exc:  # pixels with no 8-bit rule (see to_rgb)
        raise ApiError(400, "unsupported_pixels", str(exc)) from None


def decode_image(data: bytes, max_pixels: int, max_side: int, label: str = "image") -> Image.Image:
    """The RGB image encoded in ``data``: :func:`open_image` then :func:`load_rgb`.

    ``label`` names the upload in messages (e.g. ``"file 'cat.png'"``).
    """
    return load_rgb(open_image(data, max_pixels, max_side, label), label)


def _check_size(size: tuple[int, int], max_pixels: int, max_side: int, label: str) -> None:
    width, height = size  # never 0: PIL refuses a zero-sized header when opening
    if width > max_side or height > max_side:
        raise ApiError(422, "image_too_large", f"{label} is {width}x{height}; each side must be <= {max_side}")
    if width * height > max_pixels:
        raise ApiError(
            422, "image_too_large", f"{label} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
