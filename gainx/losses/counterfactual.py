"""A bank of annotated images from which each training step draws counterfactual images.

A batch holds only a few annotated images (5% of 64 is three), too few to
pair every object with backgrounds of other classes. The bank keeps the last
``capacity`` annotated images seen in training (image, cleaned background,
guide, labels; detached) and draws ``count`` (object, background) pairs with
disjoint label sets from it (:mod:`gainx.data.counterfactual`). It also gives
the cleaned backgrounds alone, labelled with no class (:meth:`draw_backgrounds`):
Chang et al. 2021 ("Towards robust classification model by counterfactual and
invariant data generation") train such object-free images towards the uniform
prediction, so the context alone carries no evidence for any class.

Rules: only images that carry a guide with at least one object pixel enter
the bank (a guide that marks no object pixel gives no object to paste and is
skipped); a step draws nothing while the bank holds no two images of disjoint
classes. The bank is not part of the model's state; :meth:`CounterfactualBank.state_dict`
gives what a training checkpoint needs so that a resumed run draws what the
uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gainx.data.counterfactual import (
    counterfactual_pairs,
    fill_objects,
    jitter_objects,
    object_pixels,
    paste_objects,
    shift_objects,
)

JITTERS = ("none", "colour", "geometry", "all")
"""What :class:`CounterfactualBank` changes in each object before pasting it (:func:`jitter_objects`):
``colour`` permutes its colour channels at random, ``geometry`` flips it left-right with probability 1/2
and rescales it by ``U(0.75, 1.25)``, ``all`` does both."""


def check_jitter(jitter: str) -> str:
    """``jitter`` if it is one of :data:`JITTERS`, else a ``ValueError`` that lists them."""
    if jitter not in JITTERS:
        raise ValueError(f"counterfactual_jitter must be one of {JITTERS}, got {jitter!r}")
    return jitter


class CounterfactualBank:
    """FIFO store of annotated images; :meth:`draw` pastes objects onto other classes' backgrounds."""

    def __init__(self, capacity: int = 512, shift: bool = True, jitter: str = "none") -> None:
        if capacity < 2:
            raise ValueError(f"counterfactual bank capacity must be >= 2, got {capacity}")
        self.capacity = capacity
        self.shift = shift  # move each pasted object by a random in-frame translation (shift_objects)
        self.jitter = check_jitter(jitter)  # change each pasted object first (jitter_objects; JITTERS)
        self.images: Tensor | None = None
        self.backgrounds: Tensor | None = None
        self.guides: Tensor | None = None
        self.labels: Tensor | None = None
        self.size = 0
        self.next = 0

    def add(self, images: Tensor, guides: Tensor, labels: Tensor) -> int:
        """Store the images whose guide marks an object pixel; returns how many were stored."""
        keep = object_pixels(guides).flatten(1).any(dim=1)
        images, guides, labels = images[keep].detach(), guides[keep], labels[keep].detach()
        n = images.shape[0]
        if n == 0:
            return 0
        if (
            self.images is None
            or self.images.shape[1:] != images.shape[1:]
            or self.guides.shape[1:] != guides.shape[1:]
        ):
            self.images = images.new_zeros(self.capacity, *images.shape[1:])
            self.backgrounds = torch.zeros_like(self.images)
            self.guides = guides.new_zeros(self.capacity, *guides.shape[1:])
            self.labels = labels.new_zeros(self.capacity, *labels.shape[1:])
            self.size = self.next = 0
        slots = (self.next + torch.arange(n, device=images.device)) % self.capacity
        self.images[slots] = images
        self.backgrounds[slots] = fill_objects(images, object_pixels(guides))
        self.guides[slots] = guides
        self.labels[slots] = labels
        self.next = (self.next + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        return n

    @property
    def nbytes(self) -> int:
        """Bytes :meth:`state_dict` holds: the filled rows of the images, guides and labels."""
        if self.images is None:
            return 0
        return sum(t[: self.size].numel() * t.element_size() for t in (self.images, self.guides, self.labels))

    def state_dict(self) -> dict[str, Any]:
        """The stored images, guides and labels (the filled rows, on the CPU) and the next row to write;
        the cleaned backgrounds are recomputed from them on load."""
        rows = slice(0, self.size)
        stored = (
            {}
            if self.images is None
            else {
                "images": self.images[rows].cpu(),
                "guides": self.guides[rows].cpu(),
                "labels": self.labels[rows].cpu(),
            }
        )
        return {"capacity": self.capacity, "size": self.size, "next": self.next, **stored}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | str = "cpu") -> None:
        """Hold what :meth:`state_dict` gave (on ``device``), as if the same images had been added."""
        size, capacity = int(state["size"]), int(state["capacity"])
        if capacity != self.capacity:
            raise ValueError(f"the saved counterfactual bank holds {capacity} images, this one {self.capacity}")
        self.images = self.backgrounds = self.guides = self.labels = None
        self.size = self.next = 0
        if size == 0:
            return
        images, guides, labels = (state[k].to(device) for k in ("images", "guides", "labels"))
        if not images.shape[0] == guides.shape[0] == labels.shape[0] == size:
            raise ValueError(f"the saved counterfactual bank is inconsistent: size {size}, {images.shape[0]} images")
        self.add(images, guides, labels)
        self.next = int(state["next"])

    def draw(self, count: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """``count`` pasted images with the labels and guides of their objects, or ``None`` if no pair exists."""
        if self.size < 2 or count <= 0:
            return None
        pairs = counterfactual_pairs(self.labels[: self.size], count)
        if pairs.numel() == 0:
            return None
        obj, bg = pairs[:, 0], pairs[:, 1]
        objects, guides = self.images[obj], self.guides[obj]
        if self.jitter != "none":
            geometry = self.jitter in ("geometry", "all")
            objects, guides = jitter_objects(
                objects,
                guides,
                scale=(0.75, 1.25) if geometry else (1.0, 1.0),
                flip=geometry,
                permute_channels=self.jitter in ("colour", "all"),
            )
        if self.shift:
            objects, guides = shift_objects(objects, guides)
        pasted, guides = paste_objects(objects, guides, self.backgrounds[bg])
        return pasted, self.labels[obj], guides

    def draw_backgrounds(self, count: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """``count`` cleaned backgrounds (objects removed, drawn with replacement) with all-zero labels
        and guides (no class anywhere), or ``None`` while the bank is empty."""
        if self.size == 0 or count <= 0:
            return None
        rows = torch.randint(self.size, (count,), device=self.labels.device)
        labels = self.labels.new_zeros(count, *self.labels.shape[1:])
        return self.backgrounds[rows], labels, self.guides.new_zeros(count, *self.guides.shape[1:])
