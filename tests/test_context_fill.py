"""The erased region's fill (gainx.ops.context_fill): zero (eq. 3) or the image's surroundings."""

from __future__ import annotations

import re

import pytest
import torch

from gainx.ops import ERASE_FILLS, context_fill, erase


def _square_hole(height: int, width: int, top: int, left: int, side: int) -> torch.Tensor:
    mask = torch.zeros(1, height, width)
    mask[:, top : top + side, left : left + side] = 1.0
    return mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(16, 16), (17, 13), (1, 9), (5, 1)])
def test_a_constant_image_is_filled_with_its_constant(size, dtype):
    colour = torch.tensor([0.3, -1.2, 2.0], dtype=dtype).view(1, 3, 1, 1)
    images = colour.expand(2, 3, *size).clone()
    kept = torch.rand(2, 1, *size, generator=torch.Generator().manual_seed(0), dtype=dtype)
    kept[0, 0, 0, 0] = 1.0  # something is kept
    fill = context_fill(images, kept)
    assert fill.shape == images.shape and fill.dtype == dtype
    torch.testing.assert_close(fill, images)


def test_the_erased_pixels_do_not_reach_the_fill():
    images = torch.randn(1, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    mask = _square_hole(20, 24, 5, 7, 8)
    other = images.clone()
    other[:, :, 5:13, 7:15] = 100.0  # what the hole held
    kept = (1 - mask).unsqueeze(1)
    torch.testing.assert_close(context_fill(images, kept), context_fill(other, kept))


def test_an_object_erased_whole_takes_the_colour_around_it():
    background = torch.tensor([0.2, 0.4, -0.5]).view(1, 3, 1, 1)
    images = background.expand(1, 3, 32, 32).clone()
    mask = _square_hole(32, 32, 10, 9, 12)
    images[:, :, 10:22, 9:21] = 3.0  # a bright square on a flat background
    torch.testing.assert_close(erase(images, mask, "context"), background.expand_as(images))
    zero = erase(images, mask, "zero")  # eq. 3: the square's silhouette stays, at zero
    assert torch.all(zero[:, :, 10:22, 9:21] == 0) and torch.allclose(zero[:, :, :10], images[:, :, :10])


def test_erase_zero_is_eq3_and_nothing_erased_is_the_image():
    images = torch.randn(3, 3, 9, 11, generator=torch.Generator().manual_seed(2))
    masks = torch.rand(3, 9, 11, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(erase(images, masks), images - masks.unsqueeze(1) * images)
    torch.testing.assert_close(erase(images, torch.zeros(3, 9, 11), "context"), images)


def test_an_image_erased_whole_is_filled_with_zero():
    images = torch.randn(2, 3, 7, 6)
    torch.testing.assert_close(context_fill(images, torch.zeros(2, 1, 7, 6)), torch.zeros_like(images))


def test_the_context_fill_is_a_constant_to_the_gradient():
    images = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(4))
    masks = torch.rand(2, 12, 10, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    weights = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(6))
    (erase(images, masks, "context") * weights).sum().backward()
    background = context_fill(images, 1 - masks.detach().unsqueeze(1))
    torch.testing.assert_close(masks.grad, -((images - background) * weights).sum(1))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="fill must be one of"):
        erase(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4), "blur")
    with pytest.raises(ValueError, match=r"kept \(N, 1, H, W\)"):
        context_fill(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="differ in size"):
        context_fill(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 5))


@pytest.mark.parametrize("fill", ERASE_FILLS)
@pytest.mark.parametrize("shape", [(2, 1, 4, 4), (2, 4, 5), (1, 4, 4), (2, 4)])
def test_masks_not_shaped_like_the_images_are_named(fill, shape):
    """A (N, 1, H, W) mask would broadcast into a 5-D result with the zero fill: refused, whatever the fill."""
    with pytest.raises(ValueError, match=rf"masks {re.escape(str(shape))}"):
        erase(torch.zeros(2, 3, 4, 4), torch.zeros(shape), fill)
