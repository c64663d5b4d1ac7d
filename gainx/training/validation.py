"""The data that selects ``best.pt``: a validation split, else a held-out fraction of the training split.

``val_split="auto"`` takes the data set's validation split (``val``, ``valid`` or ``validation``); without one
it holds out ``val_fraction`` of the training split (stratified and seeded, :mod:`gainx.data.holdout`) and
trains on the rest. It never takes a test split (a name starting with ``test``): choosing the epoch by its
accuracy on the test split biases the accuracy then reported on it. A split named explicitly is used as given,
with a warning when it is a test split. A validation split that shares image files (compared as resolved paths)
with the training split, like VOC's ``val`` inside ``trainval``, would select ``best.pt`` on training images: named
explicitly it is an error; found by ``"auto"`` it is skipped for the held-out fraction, and a note says why. The
checkpoint records which data selected it (:attr:`Validation.record`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gainx.data.dataset import GainDataset
from gainx.data.holdout import hold_out
from gainx.data.splits import dataset_splits, held_out_split, is_test_split
from gainx.training.config import TrainConfig


@dataclass(frozen=True)
class Validation:
    """The validation images, what the epoch line calls them, and the checkpoint's record of them."""

    dataset: GainDataset
    label: str  # the split's name ("val"), or "10% of train held out"
    record: dict[str, Any]  # {"split": name} or {"split": train split, "held_out": HeldOut.to_dict()}


def validation_split(cfg: TrainConfig) -> str | None:
    """The split named to validate on: ``cfg.val_split``, or for ``"auto"`` the data set's validation split
    (never a test split); None for ``None`` / ``"none"`` or when ``"auto"`` finds none."""
    if cfg.val_split in (None, "", "none"):
        return None
    if cfg.val_split != "auto":
        return cfg.val_split
    return held_out_split([s for s in dataset_splits(cfg.data) if s != cfg.train_split], "val")


def select_validation(
    cfg: TrainConfig, train_set: GainDataset, load_split: Callable[[str], GainDataset]
) -> tuple[GainDataset, Validation | None, str | None]:
    """``(training images, validation, note)`` for ``cfg`` (module docstring); ``load_split(name)`` loads a split.

    With ``val_split="auto"``, no usable validation split and ``val_fraction`` 0, there is no validation (None).
    ``note`` says why ``"auto"`` skipped the data set's validation split (it shares images with the training
    split), else None. Raises ``ValueError`` when a split named in ``cfg.val_split`` shares images with it.
    """
    split = validation_split(cfg)
    note = None
    if split is not None:
        val_set = load_split(split)
        shared = _shared_images(val_set, train_set, cfg.train_split)
        if shared is None:
            if is_test_split(split):
                warnings.warn(
                    f"--val-split {split}: best.pt is selected on a test split, which biases the numbers then "
                    f"reported on {split!r}; give a validation split, or --val-split auto to hold out "
                    f"--val-fraction of {cfg.train_split!r}",
                    UserWarning,
                    stacklevel=2,
                )
            return train_set, Validation(val_set, split, {"split": split}), None
        if cfg.val_split != "auto":
            raise ValueError(
                f"--val-split {split}: split {split!r} {shared}, so best.pt would be selected on training "
                f"images; give a split disjoint from {cfg.train_split!r}, or --val-split auto to hold out "
                "--val-fraction of it"
            )
        instead = (
            f"holds out --val-fraction {cfg.val_fraction:g} of {cfg.train_split!r} instead"
            if cfg.val_fraction
            else "goes without validation (--val-fraction 0)"
        )
        note = f"note: --val-split auto skipped split {split!r}, which {shared}; the run {instead}"
    if cfg.val_split != "auto" or not cfg.val_fraction:
        return train_set, None, note
    rest, held, record = hold_out(train_set, cfg.train_split, cfg.val_fraction, cfg.seed)
    return rest, Validation(held, record.describe(), {"split": cfg.train_split, "held_out": record.to_dict()}), note


def _shared_images(val_set: GainDataset, train_set: GainDataset, train_split: str) -> str | None:
    """Which image files (resolved paths) ``val_set`` shares with ``train_set`` (split ``train_split``), in words
    (their number and one of them); None when it shares none."""
    trained = {sample.image.resolve() for sample in train_set.samples}
    shared = sorted({path for sample in val_set.samples if (path := sample.image.resolve()) in trained})
    if not shared:
        return None
    return (
        f"shares {len(shared)} of its {len(val_set)} images with the training split {train_split!r} (e.g. {shared[0]})"
    )


def check_resumed_validation(path: Path, state: dict[str, Any], validation: Validation | None) -> None:
    """Raise ``ValueError`` when resuming checkpoint ``state`` (read from ``path``) would select ``best.pt`` on
    other images than it did (another ``val_split``, ``val_fraction``, ``seed`` or training split)."""
    record = validation.record if validation else None
    if "validation" in state and state["validation"] != record:  # older checkpoints do not say
        raise ValueError(
            f"{path} selected best.pt on {_describe(state['validation'])}, this run would on {_describe(record)}; "
            f"resume with the same --val-split, --val-fraction and --seed, or start over with --overwrite"
        )


def _describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return "nothing (no validation)"
    held = record.get("held_out")
    if held is None:
        return f"split {record['split']!r}"
    return f"{held['count']} images of {record['split']!r} (fraction {held['fraction']}, seed {held['seed']})"
