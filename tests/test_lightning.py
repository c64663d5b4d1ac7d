"""The Lightning integration fits a GAINext model on a tiny generated data set on the CPU."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

pl = pytest.importorskip("lightning.pytorch", reason="the Lightning integration needs gainx[lightning]")

from gainx.data import load_dataset  # noqa: E402
from gainx.data.synthetic import write_decoy  # noqa: E402
from gainx.integrations.lightning import GAINLightningModule  # noqa: E402
from gainx.models.small_cnn import SmallCNN  # noqa: E402


def test_fit_two_epochs_logs_the_three_losses(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = write_decoy(tmp_path / "decoy", image_size=24, train_size=64, test_size=16, mask_fraction=0.25)
    train = DataLoader(load_dataset(data, "train"), batch_size=16, shuffle=True)
    val = DataLoader(load_dataset(data, "test_random"), batch_size=16)
    model = SmallCNN(num_classes=10, width=8)
    before = [p.detach().clone() for p in model.parameters()]
    # the paper's objective (eq. 8 at alpha 1, omega_e 10), as the sum checked below
    module = GAINLightningModule(
        model, "features", method="gainext", lr=1e-2, guidance="paper", alpha=1.0, omega_e=10.0
    )
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=pl.loggers.CSVLogger(tmp_path / "logs", name="", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module, train, val)
    assert trainer.current_epoch == 2 and trainer.global_step == 8
    logged = trainer.callback_metrics
    for name in ("loss", "loss_cl", "loss_am", "loss_e"):
        assert math.isfinite(float(logged[f"train/{name}_epoch"])), name
    assert float(logged["train/loss_e_epoch"]) > 0  # 25% of the images carry masks
    assert 0 <= float(logged["val/accuracy"]) <= 1
    total = logged["train/loss_cl_epoch"] + logged["train/loss_am_epoch"] + 10 * logged["train/loss_e_epoch"]
    assert float(logged["train/loss_epoch"]) == pytest.approx(float(total), rel=1e-4)  # eq. 8, alpha 1, omega_e 10
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with (tmp_path / "logs" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sum(bool(r.get("train/loss_am_step")) for r in rows) == 8
