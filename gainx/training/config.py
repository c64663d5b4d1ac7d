"""Training configuration (plain dataclass; stored in checkpoints as a dict)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


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
