"""Read a target layer's output as ``(B, C, h, w)`` feature maps, whatever its layout.

Grad-CAM (paper eq. 1-2) weighs channels ``F_k`` over spatial positions
``(i, j)``. CNNs give ``(B, C, h, w)``; other vision models do not:

* channels-last maps ``(B, h, w, C)``: Swin (torchvision ``features.*``, timm
  ``layers.*``), the inside of ConvNeXt blocks;
* token sequences ``(B, P + h w, D)``: ViT / DeiT blocks (``P = 1`` class
  token, timm's ``num_prefix_tokens`` in general), Hugging Face ViT / Swin
  (``P = 0`` for Swin).

A *reshape transform* maps the captured tensor to ``(B, C, h, w)``. As in
pytorch-grad-cam it is applied to the activations and, separately, to their
gradients, so it must act on each sample alone (a permutation, reshape or
slice of the non-batch dims). :func:`feature_layout` picks one from the shape
when only one reading is consistent with the image size: the spatial grid
``(h, w)`` must be ``(floor or ceil(H / s), floor or ceil(W / s))`` for one
integer stride ``s`` (what convolutions, pooling and patch embeddings give).
An ambiguous shape keeps the PyTorch convention ``(B, C, h, w)`` for 4-D
outputs and is an error for token sequences (pass ``reshape_transform``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

__all__ = [
    "ReshapeTransform",
    "TokensToMap",
    "apply_transform",
    "channels_last_to_first",
    "feature_layout",
    "grid_fits",
    "token_grids",
]

ReshapeTransform = Callable[[Tensor], Tensor]


def channels_last_to_first(x: Tensor) -> Tensor:
    """``(B, h, w, C) -> (B, C, h, w)``."""
    return x.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class TokensToMap:
    """``(B, prefix + h w, D) -> (B, D, h, w)``: drop the prefix (class) tokens, fold the rest row-major."""

    prefix: int
    h: int
    w: int

    def __call__(self, x: Tensor) -> Tensor:
        return x[:, self.prefix :].reshape(x.shape[0], self.h, self.w, x.shape[-1]).permute(0, 3, 1, 2)


def grid_fits(h: int, w: int, image_size: Sequence[int]) -> bool:
    """Whether an ``h x w`` grid is the image ``(H, W)`` downsampled by one integer stride (floor or ceil)."""
    height, width = int(image_size[0]), int(image_size[1])
    return any(
        h in (height // s, -(-height // s)) and w in (width // s, -(-width // s))
        for s in range(1, max(height, width) + 1)
    )


def token_grids(num_tokens: int, image_size: Sequence[int]) -> set[tuple[int, int]]:
    """The ``(h, w)`` grids with ``h w = num_tokens`` that fit the image (:func:`grid_fits`)."""
    height, width = int(image_size[0]), int(image_size[1])
    grids = set()
    for s in range(1, max(height, width) + 1):
        for h in {height // s, -(-height // s)}:
            for w in {width // s, -(-width // s)}:
                if h > 0 and w > 0 and h * w == num_tokens:
                    grids.add((h, w))
    return grids


def feature_layout(
    output: Tensor, image_size: Sequence[int], prefix_tokens: int | None = None
) -> ReshapeTransform | None:
    """The transform that makes ``output`` ``(B, C, h, w)``; ``None`` when it already is.

    Args:
        output: the target layer's output for images of ``image_size`` ``(H, W)``.
        prefix_tokens: number of non-spatial tokens before the patch tokens of
            a ``(B, N, D)`` output (timm models carry it as ``num_prefix_tokens``);
            ``None`` tries 0 and 1.

    Raises:
        ValueError: the layout cannot be told from the shape; the message says
            what was tried and asks for a layer with spatial feature maps
            (``--target-layer``) or ``reshape_transform``.
    """
    shape = tuple(output.shape)
    if output.dim() == 4:
        if grid_fits(shape[1], shape[2], image_size) and not grid_fits(shape[2], shape[3], image_size):
            return channels_last_to_first
        return None
    hint = (
        "on the command line, choose a layer with spatial feature maps with --target-layer; "
        "from Python, pass reshape_transform= (a callable mapping it to (B, C, h, w))"
    )
    if output.dim() == 3:
        prefixes = (0, 1) if prefix_tokens is None else (int(prefix_tokens),)
        found = [TokensToMap(p, h, w) for p in prefixes for h, w in sorted(token_grids(shape[1] - p, image_size))]
        if len(found) == 1:
            return found[0]
        tried = f"{len(prefixes)} prefix token count(s) {list(prefixes)}"
        if not found:
            raise ValueError(
                f"target layer output {shape} is not (B, prefix + h w, D) tokens of a grid that fits "
                f"{tuple(image_size)} images (tried {tried}); {hint}"
            )
        readings = ", ".join(f"{t.prefix} prefix + {t.h}x{t.w}" for t in found)
        raise ValueError(f"target layer output {shape} has several token layouts ({readings}); {hint}")
    raise ValueError(f"target layer output {shape} is not (B, C, h, w) feature maps; {hint}")


def apply_transform(x: Tensor, transform: ReshapeTransform | None, what: str = "features") -> Tensor:
    """``transform(x)`` (or ``x``), checked to be ``(B, C, h, w)`` with the batch size of ``x``."""
    out = x if transform is None else transform(x)
    if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[0] != x.shape[0]:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"{what} must be (B, C, h, w) with B = {x.shape[0]} after reshape_transform, got {got} "
            f"from the target layer output {tuple(x.shape)}"
        )
    if out.shape[2] == 0 or out.shape[3] == 0:
        raise ValueError(f"{what} have an empty spatial size: {tuple(out.shape)}")
    return out
