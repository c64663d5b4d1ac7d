"""Training loop: resume equivalence, safe checkpoints, metrics files, DDP with 2 processes."""

from __future__ import annotations

import csv
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from gainx.data import load_dataset
from gainx.data.synthetic import write_decoy
from gainx.models import build_model, load_checkpoint, load_model
from gainx.training import TrainConfig, save_checkpoint
from gainx.training.batch_norm import recompute_batch_norm_statistics
from gainx.training.trainer import Trainer, train


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        out=str(out),
        arch="small_cnn",
        method="gainext",
        guidance="paper",
        alpha=1.0,  # every stream runs (at alpha 0 the erased images are not scored)
        epochs=2,
        batch_size=32,
        optimizer="sgd",
        lr=0.05,
        augment=True,
        seed=3,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize(
    ("guidance", "eta"), [("paper", 0.0), ("counterfactual", 0.5)]
)  # counterfactual: the bank and the group-DRO weight are resumed too
def test_resume_ends_where_an_uninterrupted_run_ends(decoy_dir, tmp_path, monkeypatch, guidance, eta):
    full = load_checkpoint(
        train(_cfg(decoy_dir, tmp_path / "full", epochs=3, guidance=guidance, counterfactual_eta=eta))
    )
    original = Trainer.train_epoch

    def interrupted(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt  # killed during the second epoch
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(decoy_dir, tmp_path / "cut", epochs=3, guidance=guidance, counterfactual_eta=eta))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = load_checkpoint(
        train(_cfg(decoy_dir, tmp_path / "cut", epochs=3, resume=True, guidance=guidance, counterfactual_eta=eta))
    )
    assert resumed["epoch"] == full["epoch"] == 3
    for key, value in full["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=1e-6, msg=key)
    with open(tmp_path / "cut" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    with open(tmp_path / "full" / "metrics.csv") as fh:
        full_rows = list(csv.DictReader(fh))
    assert rows[-1]["loss"] == full_rows[-1]["loss"]
    assert float(rows[-1]["loss_e"]) > 0 and float(rows[-1]["loss_am"]) > 0
    last = load_checkpoint(tmp_path / "full" / "last.pt")
    assert ("counterfactual_bank" in last) == (guidance == "counterfactual")
    if eta:  # the weight moved from its start (1), within its bound (4), and the resumed run moved it alike
        moved = float(last["counterfactual_log_weight"])
        assert moved != pytest.approx(0.0) and moved <= math.log(4.0) + 1e-6
        assert float(load_checkpoint(tmp_path / "cut" / "last.pt")["counterfactual_log_weight"]) == moved
    assert "counterfactual_bank" not in load_checkpoint(tmp_path / "full" / "best.pt")  # no training images shipped
    assert any((tmp_path / "full" / "tensorboard").iterdir())


def test_a_bank_too_large_for_last_pt_is_left_out_and_said_once(decoy_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("gainx.training.trainer.BANK_CHECKPOINT_BYTES", 0)
    train(_cfg(decoy_dir, tmp_path / "run", epochs=2, guidance="counterfactual", counterfactual_eta=0.5))
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert "counterfactual_bank" not in last and "counterfactual_log_weight" in last
    assert capsys.readouterr().err.count("is not written into last.pt") == 1
    resumed = train(
        _cfg(decoy_dir, tmp_path / "run", epochs=3, guidance="counterfactual", counterfactual_eta=0.5, resume=True)
    )
    assert load_checkpoint(resumed)["epoch"] == 3  # resumes with a refilled bank


def test_checkpoint_carries_model_metadata_and_loads_safely(decoy_dir, tmp_path):
    path = train(_cfg(decoy_dir, tmp_path / "run", epochs=1, method="baseline"))
    model, meta = load_model(path)
    assert meta["arch"] == "small_cnn" and meta["target_layer"] == "features"
    assert meta["classes"] == [str(d) for d in range(10)] and meta["image_size"] == [24, 24]
    assert meta["config"]["method"] == "baseline" and not model.training
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "ck.pt"
    state = {
        "model": {"w": torch.ones(2)},
        "arch": "small_cnn",
        "num_classes": 2,
        "classes": ["a", "b"],
        "target_layer": "features",
        "image_size": [8, 8],
        "mean": [0.0] * 3,
        "std": [1.0] * 3,
        "multilabel": False,
    }
    save_checkpoint(path, state)
    bad = dict(state, model={"w": lambda: 0})  # not picklable -> the old file must survive
    with pytest.raises((pickle.PicklingError, AttributeError)):  # Python < 3.12 raises AttributeError
        save_checkpoint(path, bad)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_unsafe_or_foreign_checkpoints_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a gainx checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_gainext_without_guides_is_refused(tmp_path):
    data = write_decoy(tmp_path / "data", image_size=16, mask_fraction=0.0, train_size=8, test_size=2)
    with pytest.raises(ValueError, match="needs masks or boxes"):
        train(_cfg(data, tmp_path / "x"))


@pytest.mark.slow
def test_ddp_two_cpu_processes(decoy_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "gainx",
        "train",
        "--data",
        str(decoy_dir),
        "--arch",
        "small_cnn",
        "--method",
        "gain",
        "--epochs",
        "1",
        "--am-warmup",
        "0",
        "--batch-size",
        "16",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 1 and state["config"]["method"] == "gain"
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and float(rows[0]["loss_am"]) > 0


def _statistics_of(checkpoint: dict, data) -> dict[str, torch.Tensor]:
    """The statistics recomputed over the training images (in order, full batches) with the checkpoint's weights."""
    model = build_model("small_cnn", len(checkpoint["classes"]))
    model.load_state_dict(checkpoint["model"])
    images = DataLoader(load_dataset(data, "train"), batch_size=32, drop_last=True)
    recompute_batch_norm_statistics(model, (b["image"] for b in images))
    return {k: v for k, v in model.state_dict().items() if "running" in k or "num_batches_tracked" in k}


def test_a_fine_tuned_run_saves_statistics_of_its_final_weights(decoy_dir, tmp_path):
    torch.save(build_model("small_cnn", 10).state_dict(), tmp_path / "start.pt")
    last = load_checkpoint(
        train(_cfg(decoy_dir, tmp_path / "ft", val_split="none", weights=str(tmp_path / "start.pt")))
    )
    assert last["bn_statistics"] == "recomputed"
    for key, value in _statistics_of(last, decoy_dir).items():
        torch.testing.assert_close(last["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_recomputing_leaves_training_as_it_was_and_a_finished_run_can_recompute_on_resume(decoy_dir, tmp_path):
    plain = load_checkpoint(train(_cfg(decoy_dir, tmp_path / "plain", bn_statistics="running", val_split="none")))
    precise = load_checkpoint(train(_cfg(decoy_dir, tmp_path / "precise", bn_statistics="recompute", val_split="none")))
    assert plain["bn_statistics"] == "running"
    rows = {}
    for name in ("plain", "precise"):
        with open(tmp_path / name / "metrics.csv") as fh:
            rows[name] = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]
    assert rows["plain"] == rows["precise"]  # same losses: the data order and augmentation were left alone
    statistics = _statistics_of(precise, decoy_dir)
    for key, value in precise["model"].items():
        if key in statistics:
            assert not torch.allclose(plain["model"][key], value), key  # the moving averages lag
            torch.testing.assert_close(value, statistics[key], rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(plain["model"][key], value), key  # weights identical
    # the finished "running" run, resumed to recompute: only its statistics change, to the precise run's
    resumed = load_checkpoint(
        train(_cfg(decoy_dir, tmp_path / "plain", bn_statistics="recompute", resume=True, val_split="none"))
    )
    assert resumed["bn_statistics"] == "recomputed" and resumed["epoch"] == 2
    for key, value in precise["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_resume_reads_the_random_states_on_the_host_whatever_the_device(decoy_dir, tmp_path):
    """On a CUDA device, a checkpoint mapped onto the device would hold the random states there, where numpy and
    torch.set_rng_state cannot take them; the meta device stands in for it here."""
    last = load_checkpoint(train(_cfg(decoy_dir, tmp_path / "run", epochs=1)))
    trainer = Trainer(_cfg(decoy_dir, tmp_path / "run", epochs=2, resume=True), False)
    trainer.device = torch.device("meta")
    trainer.restore(tmp_path / "run" / "last.pt")
    assert torch.equal(torch.get_rng_state(), last["rng"]["torch"]) and trainer.start_epoch == 1
