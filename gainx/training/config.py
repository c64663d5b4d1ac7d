"""Training configuration (plain dataclass; stored in checkpoints as a dict)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# The fields a resumed run may set otherwise than the run it continues: the length of the run (``epochs``), the
# run-folder flags, where the data and run folder lie (``data``, ``out``, ``allow_outside_root``; the classes and
# validation images are checked instead), where and how the steps run (``device``, ``backend``, ``amp``,
# ``workers``), what is printed (``progress``), the batch-norm statistics a finished run may recompute
# (``bn_statistics``), and the validation flags, compared by the images they select
# (gainx.training.validation.check_resumed_validation). Every other field must match (Trainer.restore).
MAY_CHANGE_ON_RESUME = (
    "epochs",
    "resume",
    "overwrite",
    "data",
    "out",
    "allow_outside_root",
    "device",
    "backend",
    "amp",
    "workers",
    "progress",
    "bn_statistics",
    "val_split",
    "val_fraction",
)


@dataclass
class TrainConfig:
    data: str
    out: str
    arch: str = "resnet18"  # a built-in name, timm:<name> or package.module:factory (gainx.models.build_model)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # JSON keyword arguments of a model factory
    target_layer: str | None = None  # default: the arch's, or found in the model (gainx.models.default_target_layer)
    method: str = "gain"  # baseline | gain | gainext
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9
    scheduler: str = "cosine"  # cosine | none
    image_size: int | None = None  # default: the data set's
    guide: str | None = None  # VOC and COCO: masks (default) | boxes | none (gainx.data.load_dataset)
    augment: bool = False
    alpha: float | None = None  # weight of L_am (eq. 6); None: by method (gainx.losses.gain.ALPHA_BY_METHOD)
    omega_e: float = 0.2  # weight of L_e (eq. 8)
    sigma: float = 0.5  # mask threshold (eq. 4)
    omega: float = 10.0  # mask scale (eq. 4)
    second_order: bool = False
    freeze_bn_am: bool = True
    bn_statistics: str = "auto"  # auto | recompute | running (gainx.training.batch_norm); auto: recompute fine-tuning
    am_score: str = "auto"
    am_gradient: str = "network"  # network | attention: what L_am trains (gainx.losses.gain.GAIN)
    am_fill: str = "zero"  # zero | context: what the erased region of I* holds (gainx.losses.gain.GAIN)
    am_warmup: int = 1  # epochs of L_cl only before the attention streams start
    backend: str = "auto"
    guidance: str = "counterfactual"  # paper | scaled | all_classes | signed | rrr | rrr_classes | counterfactual
    counterfactuals: int | None = None  # pasted images added to each batch (guidance "counterfactual"); None: half
    counterfactual_weight: float = 1.0  # weight of a pasted image in L_cl relative to a batch image (at start)
    counterfactual_eta: float = 0.1  # group-DRO step size of that weight (0: fixed)
    counterfactual_weight_max: float | None = 4.0  # the most the group DRO raises it to (None: no bound)
    counterfactual_jitter: str = "colour"  # none | colour | geometry | all (gainx.losses.counterfactual.JITTERS)
    counterfactual_backgrounds: int = 0  # object-free backgrounds (no label) added to each batch
    weights: str | None = None  # local backbone weights file
    seed: int = 0
    workers: int = 0
    amp: bool = True  # used on CUDA only
    device: str = "auto"
    allow_outside_root: bool = False  # accept data files outside the data folder (gainx.data.load_dataset)
    train_split: str = "train"
    val_split: str | None = "auto"  # auto: the val split, else val_fraction of train (gainx.training.validation)
    val_fraction: float = 0.1  # held out of train (stratified, seeded) when auto finds no val split; 0: none
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def differing_settings(before: TrainConfig, after: TrainConfig, names: Iterable[str]) -> list[str]:
    """``"NAME BEFORE there, AFTER asked"`` for each field in ``names`` whose value in ``before`` (the config a run
    folder records) differs from ``after`` (the config asked for now), in the order of ``names``."""
    return [
        f"{name} {getattr(before, name)!r} there, {getattr(after, name)!r} asked"
        for name in names
        if getattr(before, name) != getattr(after, name)
    ]


def resume_checked_fields() -> list[str]:
    """The fields of :class:`TrainConfig` a resumed run must keep: all but :data:`MAY_CHANGE_ON_RESUME`."""
    return [f.name for f in fields(TrainConfig) if f.name not in MAY_CHANGE_ON_RESUME]
