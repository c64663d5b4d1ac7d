"""The trainer under faults, in real processes: diverging losses, SIGKILL mid-save or after it, a full disk.

Each run is ``python -m gainx train`` (or the same entry point behind a small
wrapper that SIGKILLs the process at a chosen point) on the tiny decoy data
set with SmallCNN: a few seconds per process.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gainx.cli import main as cli_main
from gainx.models import build_model, load_checkpoint, load_model
from gainx.models.checkpoint import non_finite_tensors
from gainx.training import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
# Runs `gainx` (argv[3:]) after arranging a SIGKILL: "after_save" once last.pt of epoch argv[2] is in place,
# "mid_save" while that checkpoint's temporary file is written but not yet renamed over last.pt.
KILLER = """
import os, signal, sys
import gainx.training.trainer as trainer
from gainx.cli import main

where, epoch = sys.argv[1], int(sys.argv[2])
save = trainer.save_checkpoint

def save_and_maybe_die(path, state):
    if state["epoch"] != epoch or os.path.basename(path) != "last.pt":  # not best.pt
        return save(path, state)
    if where == "mid_save":
        fsync = os.fsync
        os.fsync = lambda fd: (fsync(fd), os.kill(os.getpid(), signal.SIGKILL))
    save(path, state)
    os.kill(os.getpid(), signal.SIGKILL)

trainer.save_checkpoint = save_and_maybe_die
sys.exit(main(sys.argv[3:]))
"""


def gainx(*args: str, kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    head = ["-c", KILLER, kill[0], str(kill[1])] if kill else ["-m", "gainx"]
    command = [sys.executable, *head, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--arch",
        "small_cnn",
        "--method",
        "baseline",
        "--batch-size",
        "32",
        "--lr",
        "0.05",
        "--no-progress",
        "--no-augment",
        *extra,
    ]


def epochs_logged(out: Path) -> list[int]:
    with open(out / "metrics.csv", newline="") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def test_diverging_loss_stops_with_epoch_and_step_and_keeps_the_last_finite_checkpoint(decoy_dir, tmp_path):
    """L_am weighted by 1e39 is infinite from the first attention-mining step (epoch 2, after one warm-up epoch)."""
    out = tmp_path / "run"
    run = gainx(*train_args(decoy_dir, out, "--method", "gain", "--alpha", "1e39", "--am-warmup", "1", "--epochs", "3"))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "epoch 2 step 1: the loss is inf" in run.stderr and "Traceback" not in run.stderr, run.stderr
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 1 and not non_finite_tensors(state["model"])
    assert epochs_logged(out) == [1]


def test_sigkill_between_checkpoint_and_metrics_loses_no_row(decoy_dir, tmp_path):
    out = tmp_path / "run"
    killed = gainx(*train_args(decoy_dir, out, "--epochs", "2"), kill=("after_save", 1))
    assert killed.returncode == -9, killed.stderr
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    resumed = gainx(*train_args(decoy_dir, out, "--epochs", "2", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert epochs_logged(out) == [1, 2]


def test_sigkill_mid_save_leaves_no_temporary_file_after_resume(decoy_dir, tmp_path):
    out = tmp_path / "run"
    killed = gainx(*train_args(decoy_dir, out, "--epochs", "2"), kill=("mid_save", 2))
    assert killed.returncode == -9, killed.stderr
    assert [p.name for p in out.glob(".last.pt.*.tmp")], "the kill should leave the checkpoint's temporary file"
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # the old checkpoint is intact
    resumed = gainx(*train_args(decoy_dir, out, "--epochs", "2", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert not list(out.glob(".*.tmp")) and load_checkpoint(out / "last.pt")["epoch"] == 2


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to mount a private tmpfs")
def test_full_disk_is_named(decoy_dir, tmp_path):
    """The run folder is a 64 KiB tmpfs (private mount namespace): the first checkpoint does not fit."""
    out = tmp_path / "tiny"
    out.mkdir()
    probe = subprocess.run(
        ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.decode().strip()}")
    command = " ".join([sys.executable, "-m", "gainx", *train_args(decoy_dir, out, "--epochs", "1")])
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    script = f"mount -t tmpfs -o size=64k tmpfs {out} && {command}; echo left: $(ls -A {out})"
    run = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert "Traceback" not in run.stderr, run.stderr
    assert f"cannot write {out / 'last.pt'}: no space left on the device" in run.stderr, run.stderr
    assert ".tmp" not in run.stdout.split("left:")[-1], run.stdout


def test_eval_refuses_non_finite_weights(decoy_dir, tmp_path, capsys):
    model = build_model("small_cnn", 10)
    state = model.state_dict()
    state["fc.weight"] = torch.full_like(state["fc.weight"], float("nan"))
    path = tmp_path / "nan.pt"
    save_checkpoint(
        path,
        {
            "model": state,
            "arch": "small_cnn",
            "num_classes": 10,
            "classes": [str(d) for d in range(10)],
            "target_layer": "features",
            "image_size": [24, 24],
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
            "multilabel": False,
        },
    )
    with pytest.raises(ValueError, match=r"nan\.pt: 1 weight tensor\(s\) hold NaN or infinite values .first: fc"):
        load_model(path)
    assert cli_main(["eval", "--checkpoint", str(path), "--data", str(decoy_dir), "--no-localization"]) == 2
    assert "NaN or infinite" in capsys.readouterr().err


@pytest.mark.parametrize("payload,needle", [({"conv.weight": 3}, "hold other values"), ([1, 2], "got list")])
def test_weights_file_without_tensors_is_refused(tmp_path, payload, needle):
    path = tmp_path / "weights.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=rf"weights\.pt: .*{needle}"):
        build_model("small_cnn", 10, path)
