"""Every guidance loss through ``gainx train``: multi-label data with boxes, single-label data with masks."""

from __future__ import annotations

import csv
import math

import pytest

from gainx.cli import main
from gainx.data.synthetic import write_cooccur, write_shapes
from gainx.experiments.variants import write_variant
from gainx.losses.guidance import GUIDANCES


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("guided")
    kwargs = dict(image_size=16, seed=0, mask_fraction=1.0, train_size=24, test_size=4)
    shapes = write_variant(write_shapes(root / "shapes", **kwargs), "boxes", 0.5, seed=0)
    cooccur = write_variant(write_cooccur(root / "cooccur", **kwargs), "masks", 0.5, seed=0)
    return {"multi-label boxes": shapes, "single-label masks": cooccur}


@pytest.mark.parametrize("kind", ["multi-label boxes", "single-label masks"])
@pytest.mark.parametrize("guidance", GUIDANCES)
def test_every_guidance_trains_through_the_cli(datasets, tmp_path, guidance, kind):
    run = tmp_path / "run"
    args = ["train", "--data", str(datasets[kind]), "--out", str(run), "--model", "small_cnn", "--method", "gainext"]
    args += ["--guidance", guidance, "--epochs", "2", "--am-warmup", "0", "--batch-size", "8", "--no-progress"]
    args += ["--val-split", "none", "--allow-outside-root", "--threads", "1"]
    assert main(args) == 0
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    for row in rows:
        assert all(math.isfinite(float(row[k])) for k in ("loss", "loss_cl", "loss_am", "loss_e"))
        assert float(row["loss_e"]) > 0  # the S_e stream saw the annotated images in every epoch


@pytest.mark.parametrize("jitter", ["colour", "all"])
def test_counterfactual_jitter_trains_through_the_cli(datasets, tmp_path, capsys, jitter):
    run = tmp_path / "run"
    args = ["train", "--data", str(datasets["single-label masks"]), "--out", str(run), "--model", "small_cnn"]
    args += ["--method", "gainext", "--guidance", "counterfactual", "--counterfactual-jitter", jitter]
    args += ["--epochs", "1", "--am-warmup", "0", "--batch-size", "8", "--no-progress"]
    args += ["--val-split", "none", "--allow-outside-root", "--threads", "1"]
    assert main(args) == 0
    with open(run / "metrics.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert math.isfinite(float(row["loss_cl"]))
    assert main([*args, "--counterfactual-jitter", "hue", "--overwrite"]) == 2
    assert "counterfactual_jitter must be one of" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["multi-label boxes", "single-label masks"])
def test_counterfactual_backgrounds_train_through_the_cli(datasets, tmp_path, capsys, kind):
    run = tmp_path / "run"
    args = ["train", "--data", str(datasets[kind]), "--out", str(run), "--model", "small_cnn"]
    args += ["--method", "gainext", "--guidance", "counterfactual", "--counterfactual-backgrounds", "4"]
    args += ["--epochs", "1", "--am-warmup", "0", "--batch-size", "8", "--no-progress"]
    args += ["--val-split", "none", "--allow-outside-root", "--threads", "1"]
    assert main(args) == 0
    with open(run / "metrics.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert all(math.isfinite(float(row[k])) for k in ("loss_cl", "loss_e"))
    assert main([*args, "--counterfactual-backgrounds", "-1", "--overwrite"]) == 2
    assert "counterfactual_backgrounds must be >= 0" in capsys.readouterr().err
