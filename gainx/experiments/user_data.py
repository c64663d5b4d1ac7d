"""A data set on disk as a bias benchmark: its bias-consistent and bias-conflicting test splits named by the
user, in any layout :func:`gainx.data.load_dataset` reads."""

from __future__ import annotations

from pathlib import Path

from gainx.data import load_dataset
from gainx.data.load import GUIDED_LAYOUTS, dataset_layout
from gainx.data.splits import dataset_splits
from gainx.experiments.specs import Benchmark

NAME = "data"  # the benchmark name of a data set on disk (its runs are in OUT/runs/data/)


def data_benchmark(
    data: str | Path,
    consistent_split: str,
    conflicting_split: str,
    train_split: str = "train",
    oracle_split: str | None = None,
    image_size: int | None = None,
) -> Benchmark:
    """The :class:`Benchmark` of the data set at ``data``; a ValueError names every split that is missing
    (with the flag that names it and the splits the data set has). Its runs train on the guides
    :func:`training_guide` picks, named in its description."""
    root = Path(data)
    splits = dataset_splits(root)
    roles = {
        "--train-split": train_split,
        "--consistent-split": consistent_split,
        "--conflicting-split": conflicting_split,
        **({"--oracle-split": oracle_split} if oracle_split is not None else {}),
    }
    missing = [f"{name!r} ({flag})" for flag, name in roles.items() if name not in splits]
    if missing:
        raise ValueError(f"{root}: no split {', '.join(missing)}; the data set's splits: {', '.join(splits)}")
    if consistent_split == conflicting_split:
        raise ValueError(f"the bias-consistent and bias-conflicting splits must differ, both are {consistent_split!r}")
    guide, guides = training_guide(root, train_split, image_size)
    return Benchmark(
        NAME,
        None,
        (consistent_split, conflicting_split),
        conflicting_split,
        f"{root}: bias-conflicting split {conflicting_split!r}, bias-consistent split {consistent_split!r}, "
        f"trained on {train_split!r}{guides}",
        root=root,
        train_split=train_split,
        oracle_split=oracle_split,
        image_size=image_size,
        guide=guide,
    )


def training_guide(root: Path, train_split: str, image_size: int | None = None) -> tuple[str | None, str]:
    """The ``guide`` (:func:`gainx.data.load_dataset`) the runs train on, and its words for the benchmark's
    description. VOC and COCO: their masks (``None``, the default) when an image of ``train_split`` has one,
    else their boxes (``"boxes"``) when an image has boxes; other layouts: their masks and boxes as listed
    (``None``, ``""``)."""
    if dataset_layout(root) not in GUIDED_LAYOUTS:
        return None, ""
    if load_dataset(root, train_split, image_size=image_size).num_guided:
        return None, " with its masks"
    if load_dataset(root, train_split, image_size=image_size, guide="boxes").num_guided:
        return "boxes", " with its boxes (no image has a mask)"
    return None, ""


def annotated_fraction(bench: Benchmark) -> float:
    """The fraction of the training split's images that carry a mask or boxes (GAINext's guides: those of
    ``bench.guide``)."""
    dataset = load_dataset(bench.root, bench.train_split, image_size=bench.image_size, guide=bench.guide)
    if len(dataset) == 0:
        raise ValueError(f"{bench.root}: the training split {bench.train_split!r} has no images")
    return dataset.num_guided / len(dataset)


def has_guides(bench: Benchmark, split: str) -> bool:
    """Whether any image of ``split`` carries a mask or boxes (the localization metrics need them; VOC and COCO
    test splits are scored on their masks, whatever the runs train on)."""
    return load_dataset(bench.root, split, image_size=bench.image_size).num_guided > 0
