"""Upload decoding and validation (gainx.serve.images): formats, header checks, corrupt data."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from image_helpers import encode, jpeg_with_header, noise, png_with_header  # tests/ is on sys.path under pytest
from PIL import Image

from gainx.data.decode import to_rgb
from gainx.serve.errors import ApiError
from gainx.serve.images import decode_image, load_rgb, open_image, sniff_format

LIMITS = dict(max_pixels=4_000_000, max_side=4096)


def expect_error(data: bytes, status: int, codes: set[str], **limits) -> ApiError:
    with pytest.raises(ApiError) as info:
        decode_image(data, **{**LIMITS, **limits}, label="file 'x'")
    err = info.value
    assert err.status == status and err.code in codes, (err.status, err.code, err.message)
    assert "file 'x'" in err.message
    return err


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
@pytest.mark.parametrize("size", [(1, 1), (37, 19), (64, 64)])
def test_png_decodes_exactly(mode: str, size: tuple[int, int]) -> None:
    source = noise(size, "RGB" if mode == "P" else mode, seed=size[0])
    if mode == "P":
        source = source.convert("P")
    data = encode(source, "PNG")
    got = decode_image(data, **LIMITS)
    assert got.mode == "RGB" and got.size == size
    np.testing.assert_array_equal(np.asarray(got), np.asarray(source.convert("RGB")))


def test_jpeg_decodes_like_pil() -> None:
    data = encode(noise((45, 31)), "JPEG", quality=90)
    got = decode_image(data, **LIMITS)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_exif_orientation_is_not_applied() -> None:
    """An EXIF-rotated JPEG decodes as stored: the pixels that training and ``gainx attention`` read."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(noise((40, 20)), "JPEG", exif=exif.tobytes())
    got = decode_image(data, **LIMITS)
    assert got.size == (40, 20)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(to_rgb(Image.open(io.BytesIO(data)))))


@pytest.mark.parametrize("fmt,size", [("PNG", (123, 45)), ("JPEG", (77, 300)), ("JPEG", (4096, 1))])
def test_open_image_reads_only_the_header(fmt: str, size: tuple[int, int]) -> None:
    data = encode(Image.new("RGB", size), fmt)
    image = open_image(data[: len(data) // 2 if fmt == "PNG" else len(data)], **LIMITS)  # PNG: pixel data cut
    assert image.size == size and image.format == fmt


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n\0\0", b"\xff\xd8\xff\xe0\x00"])
def test_open_image_of_cut_headers(data: bytes) -> None:
    with pytest.raises(ApiError) as info:
        open_image(data, **LIMITS)
    assert (info.value.status, info.value.code) == (400, "corrupt_image")


@pytest.mark.parametrize("top", [65535, 40000, 257, 255, 1])
def test_16_bit_grayscale_png_is_scaled_not_clipped(top: int) -> None:
    """A real 16-bit PNG (mode I;16): 0..65535 maps to 0..255 (round(v / 257)); PIL's convert would clip at 255."""
    values = np.linspace(0, top, 64 * 16).round().astype(np.uint16).reshape(16, 64)
    data = encode(Image.fromarray(values), "PNG")
    assert data[24] == 16 and data[25] == 0  # IHDR: bit depth 16, colour type 0 (grayscale)
    got = np.asarray(decode_image(data, **LIMITS))
    want = np.round(values / 257).astype(np.uint8)
    assert got.shape == (16, 64, 3)
    for channel in range(3):
        np.testing.assert_array_equal(got[..., channel], want)


def test_sniff_format_ignores_declared_type() -> None:
    assert sniff_format(encode(Image.new("RGB", (2, 2)), "PNG")) == "PNG"
    assert sniff_format(encode(Image.new("RGB", (2, 2)), "JPEG")) == "JPEG"
    assert sniff_format(b"GIF89a") is None and sniff_format(b"") is None


def test_empty_bytes() -> None:
    expect_error(b"", 400, {"empty_image"})


@pytest.mark.parametrize("data", [b"hello world", b"\0" * 100, np.random.default_rng(1).bytes(5000), b"<html></html>"])
def test_non_image_bytes(data: bytes) -> None:
    expect_error(data, 400, {"not_an_image"})


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP", "ICO"])
def test_other_image_formats_are_unsupported(fmt: str) -> None:
    err = expect_error(encode(Image.new("RGB", (16, 16)), fmt), 415, {"unsupported_image_format"})
    assert f"a {fmt} image" in err.message and "JPEG and PNG" in err.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_images(fmt: str, keep: float) -> None:
    data = encode(noise((64, 48), seed=3), fmt)
    expect_error(data[: int(len(data) * keep)], 400, {"image_truncated", "corrupt_image"})


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_header_cut_short(fmt: str) -> None:
    data = encode(noise((16, 16)), fmt)
    cut = 20 if fmt == "PNG" else data.find(b"\xff\xc0") + 3
    expect_error(data[:cut], 400, {"corrupt_image"})


@pytest.mark.parametrize("make", [png_with_header, jpeg_with_header])
@pytest.mark.parametrize("size", [(0, 10), (10, 0), (0, 0)])
def test_zero_dimension(make, size: tuple[int, int]) -> None:
    err = expect_error(make(*size), 400, {"corrupt_image"})
    assert "zero size" in err.message


@pytest.mark.parametrize("make", [png_with_header, jpeg_with_header])
def test_decompression_bomb_refused_from_header(make) -> None:
    data = make(60_000, 60_000)
    assert len(data) < 2000
    start = time.perf_counter()
    err = expect_error(data, 422, {"image_too_large"})
    assert time.perf_counter() - start < 0.5, "the bomb must be refused before decoding"
    assert "3600000000 pixels" in err.message


def test_pixel_and_side_limits() -> None:
    data = encode(noise((50, 40)), "PNG")
    assert decode_image(data, max_pixels=2000, max_side=50).size == (50, 40)
    expect_error(data, 422, {"image_too_large"}, max_pixels=1999)
    expect_error(data, 422, {"image_too_large"}, max_side=49)


def test_pixels_with_no_8_bit_rule_are_a_400_not_a_server_error() -> None:
    with pytest.raises(ApiError) as info:
        load_rgb(Image.new("F", (3, 2), 0.5), "file 'x'")
    err = info.value
    assert (err.status, err.code) == (400, "unsupported_pixels") and "file 'x'" in err.message and "'F'" in err.message
