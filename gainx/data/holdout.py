"""A seeded, stratified fraction of a split held out for validation (model selection without a test split).

Strata: the first label of each image (``-1`` for a multi-label image without labels) together with whether it
has a guide (mask, boxes or polygons), so the held-out part keeps the split's class balance and its annotated
fraction. Counts: ``n_val = round(fraction * n)`` clipped to ``[1, n - 1]``; a stratum of ``n_s`` images gets
``floor(n_val * n_s / n)`` of them, and the images still to place go one each to the strata with the largest
remainders ``n_val * n_s / n - floor(...)`` (ties: in the order the strata first appear). Inside a stratum the
held-out images are the first of a permutation drawn from ``numpy.random.default_rng(seed)``. The result is a
function of the labels, the guides, ``fraction`` and ``seed`` alone: the same data gives the same split.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gainx.data.dataset import GainDataset


@dataclass(frozen=True)
class HeldOut:
    """Which images of ``split`` (positions in its loading order) were held out, and how they were drawn."""

    split: str
    fraction: float
    seed: int
    indices: tuple[int, ...]  # sorted
    total: int  # images in the split

    def describe(self) -> str:
        """E.g. ``"10% of train held out"``."""
        return f"{self.fraction * 100:g}% of {self.split} held out"

    def to_dict(self) -> dict[str, Any]:
        """How the images were drawn from the split, JSON-able (checkpoints store it): :func:`hold_out` with
        this fraction and seed gives these indices again."""
        return {
            "fraction": self.fraction,
            "seed": self.seed,
            "count": len(self.indices),
            "total": self.total,
            "indices": list(self.indices),
        }


def check_fraction(fraction: float) -> None:
    """Raise ``ValueError`` unless ``0 < fraction < 1``."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must lie strictly between 0 and 1, got {fraction}")


def stratified_indices(strata: Sequence[Hashable], fraction: float, seed: int) -> list[int]:
    """Sorted positions of the held-out items, ``strata[i]`` being item i's stratum (module docstring)."""
    check_fraction(fraction)
    n = len(strata)
    if n < 2:
        raise ValueError(f"holding out a validation fraction needs at least 2 images, got {n}")
    n_val = min(max(round(fraction * n), 1), n - 1)
    members: dict[Hashable, list[int]] = {}
    for i, key in enumerate(strata):
        members.setdefault(key, []).append(i)
    quotas = [n_val * len(group) / n for group in members.values()]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda s: -(quotas[s] - counts[s]))  # stable: first seen first
    for s in by_remainder[: n_val - sum(counts)]:
        counts[s] += 1
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for group, count in zip(members.values(), counts):
        held += [group[j] for j in rng.permutation(len(group))[:count]]
    return sorted(held)


def subset(dataset: GainDataset, indices: Sequence[int], augment: bool) -> GainDataset:
    """The images of ``dataset`` at ``indices``, with its classes, size and normalization."""
    return GainDataset(
        [dataset.samples[i] for i in indices],
        dataset.classes,
        dataset.multilabel,
        dataset.image_size,
        augment=augment,
        mean=dataset.mean,
        std=dataset.std,
        binary_masks=dataset.binary_masks,
    )


def hold_out(dataset: GainDataset, split: str, fraction: float, seed: int) -> tuple[GainDataset, GainDataset, HeldOut]:
    """``(rest, held_out, record)``: ``dataset`` (split ``split``) cut in two disjoint parts.

    ``rest`` keeps ``dataset.augment``; ``held_out`` is never augmented (it is evaluated, not trained on).
    """
    strata = [(s.labels[0] if s.labels else -1, bool(s.has_guide)) for s in dataset.samples]
    held = stratified_indices(strata, fraction, seed)
    chosen = set(held)
    rest = [i for i in range(len(dataset)) if i not in chosen]
    record = HeldOut(split, float(fraction), int(seed), tuple(held), len(dataset))
    return subset(dataset, rest, dataset.augment), subset(dataset, held, augment=False), record
