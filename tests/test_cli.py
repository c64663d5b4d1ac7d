"""The command line end to end on a tiny data set: data, train, eval, attention, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from gainx.cli import main
from gainx.demo import DemoProfile, run_demo


def gainx_cmd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # cwd outside the checkout: `python -m` must import the installed package, not the source tree
    return subprocess.run([sys.executable, "-m", "gainx", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_data_train_eval_attention(tmp_path):
    data = tmp_path / "data"
    proc = gainx_cmd(
        "data",
        "decoy",
        "--out",
        str(data),
        "--size",
        "20",
        "--train-size",
        "64",
        "--test-size",
        "16",
        "--mask-fraction",
        "0.25",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    proc = gainx_cmd(
        "train",
        "--data",
        str(data),
        "--arch",
        "small_cnn",
        "--method",
        "gainext",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--out",
        str(run),
        "--no-progress",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert (run / "last.pt").is_file() and (run / "metrics.csv").is_file() and (run / "config.json").is_file()

    proc = gainx_cmd(
        "eval", "--checkpoint", str(run / "last.pt"), "--data", str(data), "--split", "test_random", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["num_images"] == 16 and 0 <= report["accuracy"] <= 1
    loc = report["localization"]
    assert loc["num_maps"] == 16 and 0 <= loc["miou"] <= 1 and 0 <= loc["pointing_game"] <= 1

    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 26, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "overlays"
    assert main(["attention", str(image), "--checkpoint", str(run / "last.pt"), "--out", str(out), "--topk", "2"]) == 0
    written = sorted(out.glob("digit_*.png"))
    assert len(written) == 2 and Image.open(written[0]).size == (20, 20)
    assert (
        main(["attention", str(image), "--checkpoint", str(run / "last.pt"), "--out", str(out), "--classes", "7"]) == 0
    )
    assert (out / "digit_7.png").is_file()


def test_errors_name_the_problem(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tmp_path)]) == 2
    assert "nope.pt" in capsys.readouterr().err
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    run = tmp_path / "run"
    data = tmp_path / "data"
    assert main(["data", "decoy", "--out", str(data), "--size", "16", "--train-size", "8", "--test-size", "2"]) == 0
    assert (
        main(["train", "--data", str(data), "--arch", "small_cnn", "--epochs", "1", "--out", str(run), "--no-progress"])
        == 0
    )
    capsys.readouterr()
    assert main(["attention", str(bad), "--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert (
        main(
            [
                "attention",
                str(bad),
                "--checkpoint",
                str(run / "last.pt"),
                "--out",
                str(tmp_path / "o"),
                "--classes",
                "cat",
            ]
        )
        == 2
    )
    assert "unknown class names ['cat']" in capsys.readouterr().err


def test_demo_writes_table_and_figure(tmp_path):
    tiny = DemoProfile(image_size=20, train_size=64, test_size=16, epochs=1, mask_fraction=0.25)
    results = run_demo(out=tmp_path, profile=tiny)
    assert set(results["methods"]) == {"baseline", "gain", "gainext", "gainext-counterfactual"}
    for row in results["methods"].values():
        for split in ("test_consistent", "test_random"):
            assert 0 <= row[split]["accuracy"] <= 1 and row[split]["num_maps"] == 16
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert (tmp_path / "results.md").read_text().startswith("| method |")
    assert Image.open(tmp_path / "attention.png").size[0] > 100
