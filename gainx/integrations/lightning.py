"""PyTorch Lightning: train any classifier with the GAIN / GAINext objective (``pip install "gainx[lightning]"``).

``GAINLightningModule`` wraps a model and a :class:`gainx.GAIN` objective. A training step is one
forward and one backward of the objective (``L_cl + alpha L_am``, eq. 6, plus ``omega_e L_e``, eq. 8,
for GAINext); ``loss``, ``loss_cl``, ``loss_am`` and ``loss_e`` are logged per step and per epoch under
``train/``. Batches are the dicts of :class:`gainx.data.GainDataset` (``image``, ``labels``, ``guide``,
``has_guide``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from gainx._extras import require
from gainx.losses import GAIN, GAINOutput

pl = require("lightning.pytorch", extra="lightning", feature="the Lightning integration")

LOSSES = ("loss", "loss_cl", "loss_am", "loss_e")


class GAINLightningModule(pl.LightningModule):
    """A LightningModule that trains ``model`` with the GAIN objective.

    Args:
        model: any classifier returning ``(B, C)`` scores.
        target_layer: module path of the attention layer (e.g. ``"layer4"``).
        method: ``"baseline"``, ``"gain"`` (eq. 6) or ``"gainext"`` (eq. 8).
        multilabel: multi-label soft margin / sigmoid scores; else cross-entropy / softmax.
        optimizer: ``parameters -> torch.optim.Optimizer``; default Adam with ``lr``.
        lr: learning rate of the default optimizer.
        **gain_options: the other arguments of :class:`gainx.GAIN` (``alpha``, ``omega_e``, ``sigma``, ...).

    Validation runs under ``torch.no_grad`` in Lightning, where Grad-CAM cannot be computed, so
    ``validation_step`` logs ``val/loss_cl`` and ``val/accuracy`` (top-1, or exact-match of the
    thresholded scores for multi-label data).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str,
        method: str = "gain",
        multilabel: bool = False,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        lr: float = 1e-3,
        **gain_options: Any,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer"])
        self.model = model
        self.objective = GAIN(model, target_layer, method=method, multilabel=multilabel, **gain_options)
        self.optimizer_factory = optimizer
        self.lr = lr

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out: GAINOutput = self.objective(batch["image"], batch["labels"], batch.get("guide"), batch.get("has_guide"))
        self.log_dict(
            {f"train/{name}": getattr(out, name).detach() for name in LOSSES},
            on_step=True,
            on_epoch=True,
            batch_size=batch["image"].shape[0],
        )
        return out.loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out: GAINOutput = self.objective(batch["image"], batch["labels"], mining=False)
        labels = batch["labels"] > 0.5
        if self.objective.multilabel:
            correct = ((out.scores > 0) == labels).all(1)
        else:
            correct = out.scores.argmax(1) == labels.float().argmax(1)
        self.log_dict(
            {"val/loss_cl": out.loss_cl, "val/accuracy": correct.float().mean()}, batch_size=batch["image"].shape[0]
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is not None:
            return self.optimizer_factory(self.model.parameters())
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)
