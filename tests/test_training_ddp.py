"""Resuming a DDP run (two gloo processes on the CPU): every rank continues with its own random state and
counterfactual bank, and the run ends where an uninterrupted one ends."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch
from ddp_helpers import run_ranks  # tests/ is on sys.path under pytest

import gainx.training.trainer as trainer_module
from gainx.data.synthetic import write_decoy
from gainx.models import load_checkpoint
from gainx.training import TrainConfig
from gainx.training.trainer import TrainingDiverged, train


def _config(data: Path, out: Path, **kw: Any) -> TrainConfig:
    settings: dict[str, Any] = dict(
        arch="small_cnn",
        method="gainext",  # the default recipe: counterfactual images drawn from each rank's bank
        epochs=2,
        batch_size=16,
        seed=3,
        progress=False,
        device="cpu",
        workers=0,
    )
    return TrainConfig(data=str(data), out=str(out), **{**settings, **kw})


def _worker(rank: int, port: int, cfg: TrainConfig) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    train(cfg, announce=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_on_two_ranks(cfg: TrainConfig) -> dict[str, Any]:
    run_ranks(_worker, _free_port(), cfg)
    return load_checkpoint(Path(cfg.out) / "last.pt")


def test_a_resumed_ddp_run_ends_where_an_uninterrupted_one_ends(tmp_path):
    data = write_decoy(tmp_path / "data", image_size=16, seed=1, mask_fraction=0.25, train_size=96, test_size=8)
    full = _train_on_two_ranks(_config(data, tmp_path / "full"))
    cut = _train_on_two_ranks(_config(data, tmp_path / "cut", epochs=1))
    banks = [rank["counterfactual_bank"] for rank in cut["ranks"]]  # each rank's own annotated images
    assert len(banks) == 2 and not torch.equal(banks[0]["images"], banks[1]["images"])
    resumed = _train_on_two_ranks(_config(data, tmp_path / "cut", epochs=2, resume=True))
    assert resumed["epoch"] == full["epoch"] == 2
    for key, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6, msg=key)
    torch.testing.assert_close(resumed["counterfactual_log_weight"], full["counterfactual_log_weight"])


def _diverging_worker(rank: int, port: int, cfg: TrainConfig, folder: str) -> None:
    """Rank 0 finds non-finite weights after the first epoch (the check runs on it alone); every rank must stop."""
    if rank == 0:
        trainer_module.non_finite_tensors = lambda state: ["features.0.0.weight"]
    try:
        _worker(rank, port, cfg)
    except TrainingDiverged as stop:
        (Path(folder) / f"stopped{rank}").write_text(str(stop))


def test_every_rank_stops_when_the_main_one_finds_non_finite_weights(tmp_path):
    data = write_decoy(tmp_path / "data", image_size=16, seed=1, mask_fraction=0.25, train_size=48, test_size=8)
    run_ranks(_diverging_worker, _free_port(), _config(data, tmp_path / "run"), str(tmp_path), timeout=90)
    for rank in range(2):
        assert "features.0.0.weight" in (tmp_path / f"stopped{rank}").read_text()
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing saved


def _cli_worker(rank: int, port: int, argv: list[str], folder: str) -> None:
    """``gainx train`` as torchrun starts it on rank ``rank``; its stdout goes to ``folder/out{rank}``."""
    import contextlib

    from gainx.cli import main

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    with open(Path(folder) / f"out{rank}", "w") as out, contextlib.redirect_stdout(out):
        assert main(argv) == 0


def test_gainx_train_under_torchrun_leaves_out_one_image_tails_and_prints_the_checkpoint_once(tmp_path):
    """10 images on 2 ranks are 5 per rank, in batches of 2 and one over: batch norm over resnet18's 1x1 maps at
    32 px cannot train on that last image, so it is left out; only the main rank prints the files it wrote."""
    data = write_decoy(tmp_path / "data", image_size=32, seed=1, mask_fraction=0.0, train_size=10, test_size=2)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--model", "resnet18", "--epochs", "1"]
    argv += ["--batch-size", "2", "--image-size", "32", "--method", "baseline", "--val-split", "none"]
    argv += ["--device", "cpu", "--workers", "0", "--no-progress"]
    run_ranks(_cli_worker, _free_port(), argv, str(tmp_path), timeout=120)
    assert (tmp_path / "out0").read_text().splitlines()[-1] == f"checkpoint: {tmp_path / 'run' / 'last.pt'}"
    assert "checkpoint" not in (tmp_path / "out1").read_text()
