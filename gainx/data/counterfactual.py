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
places on many backgrounds, not only where they stood.
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
    mask = object_pixels(object_guides)
    empty = torch.nonzero(~mask.flatten(1).any(dim=1)).flatten().tolist()
    if empty:
        raise ValueError(f"cannot paste images {empty}: their guides mark no object pixel (value 1)")
    m = mask.unsqueeze(1).to(objects.dtype)
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
    if object_guides.shape[0] != objects.shape[0] or object_guides.shape[-2:] != objects.shape[-2:]:
        raise ValueError(f"guides {tuple(object_guides.shape)} do not match images {tuple(objects.shape)}")
    mask = object_pixels(object_guides)
    rows, cols = mask.any(dim=2), mask.any(dim=1)  # (N, H), (N, W)
    empty = torch.nonzero(~rows.any(dim=1)).flatten().tolist()
    if empty:
        raise ValueError(f"cannot shift images {empty}: their guides mark no object pixel (value 1)")
    shifted_images, shifted_guides = torch.empty_like(objects), torch.empty_like(object_guides)
    for i in range(objects.shape[0]):
        dy = _offset(rows[i], generator)
        dx = _offset(cols[i], generator)
        shifted_images[i] = torch.roll(objects[i], (dy, dx), dims=(-2, -1))
        shifted_guides[i] = torch.roll(object_guides[i], (dy, dx), dims=(-2, -1))
    return shifted_images, shifted_guides


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
