"""Counterfactual images from annotated objects: an object pasted onto another class's background.

Xiao et al. 2020 ("Noise or Signal: the role of image backgrounds in object
recognition") show that a classifier stops reading the background once the
background no longer predicts the label. From images whose guide marks the
object pixels (masks, or boxes rasterized into masks) we build

    I' = B * (1 - M_o) + I_o * M_o

where ``I_o`` is an annotated image, ``M_o`` the union of its object pixels
(guide value 1 in any class channel) and ``B`` the *cleaned* background of an
annotated image of other classes: its own object pixels (dilated by one pixel)
filled from the nearest background pixel in the same row, then the same column
(:func:`fill_objects`). ``I'`` keeps the labels and the guide of ``I_o``, so
the context it shows is uninformative about its label. Optionally the object
is first moved by a random translation that keeps all of its pixels in the
frame (:func:`shift_objects`), so a few annotated objects are seen at many
places on many backgrounds, not only where they stood, and before that
flipped and rescaled (:func:`jitter_objects`), so they are seen at many sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def object_pixels(guide: Tensor) -> Tensor:
    """``(N, C, H, W)`` uint8 guides -> ``(N, H, W)`` bool: pixels that belong to some class (value 1)."""
    if guide.dim() != 4 or guide.dtype != torch.uint8:
        raise ValueError(f"guides must be (N, C, H, W) uint8, got {tuple(guide.shape)} {guide.dtype}")
    return (guide == 1).any(dim=1)


def _fill_along(images: Tensor, missing: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Fill ``missing`` pixels from the nearest known pixel along spatial ``dim`` (-1 rows, -2 columns)."""
    out, todo = images.clone(), missing.clone()
    for shift in range(1, images.shape[dim]):
        if not bool(todo.any()):
            break
        for step in (shift, -shift):  # left (or upper) neighbour first
            src_known = ~torch.roll(missing, step, dims=dim)
            # a rolled pixel that wrapped around the border is not a neighbour
            idx = torch.arange(images.shape[dim], device=images.device)
            inside = (idx - step >= 0) & (idx - step < images.shape[dim])
            inside = inside.view(-1, 1) if dim == -2 else inside.view(1, -1)
            take = todo & src_known & inside
            out = torch.where(take.unsqueeze(1), torch.roll(images, step, dims=dim), out)
            todo = todo & ~take
    return out, todo


def fill_objects(images: Tensor, objects: Tensor) -> Tensor:
    """Images with their ``objects`` pixels (``(N, H, W)`` bool, dilated by one pixel) replaced by background.

    Each hidden pixel takes the nearest visible pixel of its row (left or right);
    pixels whose whole row is hidden take the nearest of their column, and an
    image hidden everywhere keeps its pixels.
    """
    if objects.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"object pixels {tuple(objects.shape)} do not match images {tuple(images.shape)}")
    hidden = F.max_pool2d(objects.unsqueeze(1).float(), 3, stride=1, padding=1).squeeze(1) > 0
    filled, left = _fill_along(images, hidden, dim=-1)
    if bool(left.any()):
        filled, _ = _fill_along(filled, left, dim=-2)
    return filled


def _object_masks(objects: Tensor, object_guides: Tensor, verb: str) -> Tensor:
    """``(N, H, W)`` object pixels of each image; raises if the guides do not match the images or an
    image has no object pixel (nothing to ``verb``)."""
    if object_guides.shape[0] != objects.shape[0] or object_guides.shape[-2:] != objects.shape[-2:]:
        raise ValueError(f"guides {tuple(object_guides.shape)} do not match images {tuple(objects.shape)}")
    mask = object_pixels(object_guides)
    empty = torch.nonzero(~mask.flatten(1).any(dim=1)).flatten().tolist()
    if empty:
        raise ValueError(f"cannot {verb} images {empty}: their guides mark no object pixel (value 1)")
    return mask


def paste_objects(objects: Tensor, object_guides: Tensor, backgrounds: Tensor) -> tuple[Tensor, Tensor]:
    """Paste each image's annotated object onto a background: ``I' = B (1 - M_o) + I_o M_o``.

    Args:
        objects: ``(N, 3, H, W)`` images that carry the objects.
        object_guides: ``(N, C, H, W)`` uint8 guides of ``objects`` (1 object, 0 background, 255 ignore).
        backgrounds: ``(N, 3, H, W)`` cleaned backgrounds (:func:`fill_objects`).

    Returns:
        the pasted images and their guides (those of ``objects``: the pasted pixels are the object,
        every other valid pixel is background). Raises if an object image has no object pixel.
    """
    if objects.shape != backgrounds.shape or object_guides.shape[0] != objects.shape[0]:
        raise ValueError(
            f"objects {tuple(objects.shape)}, guides {tuple(object_guides.shape)} and backgrounds "
            f"{tuple(backgrounds.shape)} must be (N, 3, H, W), (N, C, H, W), (N, 3, H, W)"
        )
    m = _object_masks(objects, object_guides, "paste").unsqueeze(1).to(objects.dtype)
    return backgrounds * (1 - m) + objects * m, object_guides.clone()


def shift_objects(
    objects: Tensor, object_guides: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Move each image's object pixels (and its guide) by a random integer translation that keeps them in frame.

    The translation ``(dy, dx)`` of image i is uniform over the offsets that keep
    the bounding box of its object pixels inside the image; the image and its
    guide are rolled by it together (no pixel of the object wraps around).
    Images without object pixels raise, as in :func:`paste_objects`.
    """
    mask = _object_masks(objects, object_guides, "shift")
    rows, cols = mask.any(dim=2), mask.any(dim=1)  # (N, H), (N, W)
    shifted_images, shifted_guides = torch.empty_like(objects), torch.empty_like(object_guides)
    for i in range(objects.shape[0]):
        dy = _offset(rows[i], generator)
        dx = _offset(cols[i], generator)
        shifted_images[i] = torch.roll(objects[i], (dy, dx), dims=(-2, -1))
        shifted_guides[i] = torch.roll(object_guides[i], (dy, dx), dims=(-2, -1))
    return shifted_images, shifted_guides


def jitter_objects(
    objects: Tensor,
    object_guides: Tensor,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.75, 1.25),
    flip: bool = True,
    permute_channels: bool = False,
) -> tuple[Tensor, Tensor]:
    """Flip and rescale each image's object (and its guide) about the centre of its bounding box.

    The copy-paste augmentation of Ghiasi et al. 2021 ("Simple Copy-Paste"):
    the bounding box of image i's object pixels is mirrored left-right with
    probability 1/2 (``flip``), resized by ``s ~ U(scale)`` (nearest for the
    guide; bilinear for the image, normalized over object pixels,
    ``bilinear(I M) / bilinear(M)``, so the box's own background does not
    bleed into the object's edge; ``s`` is capped so that the box fits the
    frame) and put back centred where it was, moved inside the frame if it
    sticks out. Pixels outside the new box are zero in the image and
    background (0) in the guide, so only the object is pasted. A few annotated
    objects are then seen at many sizes and both orientations. Images without
    object pixels raise, as in :func:`paste_objects`.
    """
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    mask = _object_masks(objects, object_guides, "jitter")
    height, width = objects.shape[-2:]
    images, guides = torch.zeros_like(objects), torch.zeros_like(object_guides)
    for i in range(objects.shape[0]):
        ys, xs = torch.nonzero(mask[i], as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        image, guide = objects[i, :, y0:y1, x0:x1], object_guides[i, :, y0:y1, x0:x1]
        inside = mask[i, y0:y1, x0:x1].to(image.dtype)
        if flip and float(torch.rand((), generator=generator)) < 0.5:
            image, guide, inside = image.flip(-1), guide.flip(-1), inside.flip(-1)
        s = scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=generator))
        s = min(s, height / (y1 - y0), width / (x1 - x0))
        h, w = max(1, round((y1 - y0) * s)), max(1, round((x1 - x0) * s))
        # object pixels only: the box's own background must not bleed into the object's edge
        weight = F.interpolate(inside[None, None], (h, w), mode="bilinear", align_corners=False)[0]
        image = F.interpolate((image * inside)[None], (h, w), mode="bilinear", align_corners=False)[0]
        image = image / weight.clamp_min(1e-6)
        guide = F.interpolate(guide[None].float(), (h, w), mode="nearest")[0].to(object_guides.dtype)
        top = min(max(round((y0 + y1 - h) / 2), 0), height - h)
        left = min(max(round((x0 + x1 - w) / 2), 0), width - w)
        if permute_channels:
            image = image[torch.randperm(image.shape[0], generator=generator)]
        images[i, :, top : top + h, left : left + w] = image
        guides[i, :, top : top + h, left : left + w] = guide
    return images, guides


def _offset(occupied: Tensor, generator: torch.Generator | None) -> int:
    """A uniform shift along one axis that keeps the occupied span ``occupied`` (bool, (L,)) inside [0, L)."""
    idx = torch.nonzero(occupied).flatten()
    low, high = -int(idx[0]), occupied.numel() - 1 - int(idx[-1])
    return low + int(torch.randint(high - low + 1, (1,), generator=generator))


def counterfactual_pairs(labels: Tensor, count: int, generator: torch.Generator | None = None) -> Tensor:
    """``(K, 2)`` (object, background) index pairs whose label sets are disjoint, ``K <= count``.

    Pairs are drawn uniformly among all such pairs (with replacement); none when no two images
    have disjoint labels.
    """
    hits = labels > 0.5
    disjoint = ~(hits.float() @ hits.float().T).bool()
    candidates = torch.nonzero(disjoint)
    if candidates.numel() == 0 or count <= 0:
        return candidates[:0]
    pick = torch.randint(candidates.shape[0], (count,), generator=generator, device="cpu")
    return candidates[pick.to(candidates.device)]
