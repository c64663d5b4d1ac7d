"""The command line end to end on a tiny data set: data, train, eval, attention, demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gainx.cli import main
from gainx.demo import DemoProfile, run_demo


def gainx_cmd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # cwd outside the checkout: `python -m` must import the installed package, not the source tree
    return subprocess.run([sys.executable, "-m", "gainx", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_data_train_eval_attention(tmp_path, capsys):
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
        "--threads",
        "1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert (run / "last.pt").is_file() and (run / "metrics.csv").is_file() and (run / "config.json").is_file()
    assert proc.stdout.startswith("epoch 1/1 | loss ")  # the summary line stays without progress bars
    assert (run / "best.pt").is_file()  # validated on the decoy's first test split

    proc = gainx_cmd(
        "eval", "--checkpoint", str(run / "last.pt"), "--data", str(data), "--split", "test_random", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["num_images"] == 16 and 0 <= report["accuracy"] <= 1
    loc = report["localization"]
    assert loc["num_maps"] == 16 and 0 <= loc["miou"] <= 1 and 0 <= loc["pointing_game"] <= 1

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # no --split: the data set's test split (it has no split called "test"), named on stderr
        capsys.readouterr()
        assert main(["eval", "--checkpoint", str(run / "best.pt"), "--data", str(data), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    assert json.loads(captured.out)["split"] == "test_consistent" and "split 'test_consistent'" in captured.err

    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 26, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "overlays"
    assert main(["attention", str(image), "--checkpoint", str(run / "last.pt"), "--out", str(out), "--topk", "2"]) == 0
    written = sorted(out.glob("digit_*.png"))
    assert len(written) == 2 and Image.open(written[0]).size == (26, 30)  # the image's own width and height
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    scores = []
    for line in lines:  # "<image>: <class> <probability> -> <overlay>"
        head, path = line.split(" -> ")
        name, cls, score = head.rsplit(" ", 2)
        assert name == f"{image}:" and Path(path) == out / f"digit_{cls}.png" and Path(path).is_file()
        scores.append(float(score))
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
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
    assert main(["train", "--data", str(data), "--arch", "small_cnn", "--out", str(run), "--no-progress"]) == 2
    assert "already holds a training run" in capsys.readouterr().err
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


def test_train_help_lists_choices_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "-h"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "small_cnn, resnet18, resnet50" in text and "(default: resnet18)" in text
    assert "--optimizer {adamw,sgd}" in text and "(default: adamw)" in text and "(default: 0.001)" in text
    assert "--method {baseline,gain,gainext}" in text and "--threads THREADS" in text


def test_closed_stdout_pipe_exits_quietly(tmp_path):
    """``gainx ... | head``: the reader goes away before gainx writes; no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gainx", "data", "decoy", "--out", str(tmp_path / "d"), "--size", "16",
         "--train-size", "4", "--test-size", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )  # fmt: skip
    proc.stdout.close()  # long before the interpreter has imported torch and written anything
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
