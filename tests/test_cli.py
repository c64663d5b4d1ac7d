"""The command line end to end on a tiny data set: data, train, eval, attention, demo."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from folder_helpers import write_imagefolder, write_voc_with_boxes  # tests/ is on sys.path under pytest
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
    for line in lines:  # "<image>: <class> probability <p> -> <overlay>"
        head, path = line.split(" -> ")
        name, cls, _, score = head.rsplit(" ", 3)
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


def test_demo_writes_table_and_figure(tmp_path, capsys):
    tiny = DemoProfile(image_size=20, train_size=64, test_size=16, epochs=1, mask_fraction=0.25)
    results = run_demo(out=tmp_path, profile=tiny)
    assert capsys.readouterr().err.count("target layer:") == 1  # four runs, one announcement
    assert set(results["methods"]) == {"baseline", "gain", "gainext-paper", "gainext"}
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
    assert "--optimizer {adamw,sgd}" in text and "(default: adamw)" in text and "(default: 0.003)" in text
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


def _train(data: Path, run: Path, *flags: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "small_cnn", "--epochs", "1", "--out", str(run), "--no-progress",
            *flags]  # fmt: skip


def test_voc_boxes_train_with_guide_and_the_error_names_them(tmp_path, capsys):
    voc = write_voc_with_boxes(tmp_path / "voc")
    assert main(_train(voc, tmp_path / "r1", "--method", "gainext", "--image-size", "32")) == 2
    err = capsys.readouterr().err
    assert "needs masks or boxes" in err and "4 of its images have boxes" in err and "--guide boxes" in err
    assert main(_train(voc, tmp_path / "r2", "--method", "gainext", "--image-size", "32", "--guide", "none")) == 2
    assert "unused with guide 'none'" in capsys.readouterr().err
    assert main(_train(voc, tmp_path / "r3", "--method", "gainext", "--image-size", "32", "--guide", "boxes")) == 0
    err = capsys.readouterr().err
    assert "data: voc layout" in err and re.search(r"'train' (\d+) images \(\1 with guides\)", err)
    folder = write_imagefolder(tmp_path / "folder", {"train": 2})
    assert main(_train(folder, tmp_path / "r4", "--guide", "boxes")) == 2
    assert "applies to the VOC and COCO layouts only" in capsys.readouterr().err


def test_train_prints_what_it_will_do_and_warns_of_coarse_maps(tmp_path, capsys):
    data = write_imagefolder(tmp_path / "photos", {"train": 3, "val": 2})
    assert main(_train(data, tmp_path / "run", "--image-size", "32")) == 0
    err = capsys.readouterr().err
    assert "data: imagefolder layout at" in err and "'train' 6 images (0 with guides)" in err
    assert "validation on val: 4 images" in err
    assert "input size: 32x32 (--image-size)" in err
    assert "target layer: features (the default for small_cnn" in err and "feature maps 8x8" in err
    assert "objective: GAIN (eq. 6): L_cl + 1 L_am; the attention terms from epoch 2" in err  # the default method
    assert "warning" not in err
    assert main(_train(data, tmp_path / "coarse", "--image-size", "16")) == 0
    err = capsys.readouterr().err
    assert "feature maps 4x4" in err and "warning: the attention maps have only 4x4 cells at 16x16 input" in err
    assert main(_train(data, tmp_path / "default")) == 0
    assert "input size: 224x224 (the data set's default" in capsys.readouterr().err


def test_a_target_layer_without_feature_maps_names_the_flag(tmp_path, capsys):
    data = write_imagefolder(tmp_path / "photos", {"train": 2})
    assert main(_train(data, tmp_path / "run", "--image-size", "32", "--target-layer", "fc")) == 2
    err = capsys.readouterr().err
    assert "output (1, 2) is not (B, C, h, w) feature maps" in err and err.count("\n") == 1
    assert "choose a layer with spatial feature maps with --target-layer" in err
    assert "from Python, pass reshape_transform=" in err


def test_eval_prints_strict_rounded_json_for_several_splits(tmp_path, capsys):
    data = write_imagefolder(tmp_path / "photos", {"train": 3, "val": 2, "test": 2})
    run = tmp_path / "run"
    assert main(_train(data, run, "--image-size", "32")) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--data", str(data), "--split", "val", "test"]) == 0

    def no_constants(name: str):
        raise AssertionError(f"not JSON: {name}")

    reports = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert list(reports) == ["val", "test"] and reports["test"]["split"] == "test"
    for report in reports.values():
        assert report["num_images"] == 4 and round(report["accuracy"], 4) == report["accuracy"]
        loc = report["localization"]  # ImageFolder without masks: nothing to score the maps against
        assert loc["miou"] is None and loc["pointing_game"] is None and loc["num_maps"] == 0
        assert "no image of the split carries a mask or boxes" in loc["miou_undefined"]
    assert main(["eval", "--checkpoint", str(run / "last.pt"), "--data", str(data), "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "val"  # one split: the report itself


def test_attention_names_overlays_apart_and_prints_probabilities(tmp_path, capsys):
    data = write_imagefolder(tmp_path / "photos", {"train": 2})
    run = tmp_path / "run"
    assert main(_train(data, run, "--image-size", "32")) == 0
    capsys.readouterr()
    same_stem = [data / "train" / "cat" / "0.jpg", data / "train" / "dog" / "0.jpg"]
    out = tmp_path / "overlays"
    assert main(["attention", *map(str, same_stem), "--checkpoint", str(run / "last.pt"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    written = [Path(line.split(" -> ")[1]) for line in lines]
    assert len(set(written)) == 2 and all(p.is_file() for p in written)
    assert {p.name.split("_0_")[0] for p in written} == {"cat", "dog"}
    for line in lines:  # "<image>: <class> probability <p> -> <overlay>"
        head = line.split(" -> ")[0]
        assert head.split()[-2] == "probability" and 0 < float(head.split()[-1]) <= 1
    twice = [str(same_stem[0])] * 2
    assert main(["attention", *twice, "--checkpoint", str(run / "last.pt"), "--out", str(out)]) == 2
    assert "given more than once" in capsys.readouterr().err


def test_missing_tensorboard_is_one_plain_line(tmp_path, capsys, monkeypatch):
    import warnings

    from gainx._extras import MissingExtraError
    from gainx.training import metrics_log

    def missing(*args, **kwargs):
        raise MissingExtraError("TensorBoard logging needs the 'tensorboard' extra: pip install 'gainx[tensorboard]'")

    monkeypatch.setattr(metrics_log, "require", missing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics_log.MetricsLog(tmp_path)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics go to metrics.csv only" in err and "tensorboard" in err


def test_internal_errors_show_their_cause_and_the_debug_hint(tmp_path, capsys, monkeypatch):
    import gainx.cli

    def broken_import(args):
        try:
            raise KeyError("torchvision::nms")
        except KeyError as exc:
            raise RuntimeError("operator torchvision::nms does not exist") from exc

    monkeypatch.setattr(gainx.cli, "_cmd_eval", broken_import)
    argv = ["eval", "--checkpoint", "x.pt", "--data", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "gainx eval: internal error: RuntimeError: operator torchvision::nms does not exist" in err
    assert "caused by KeyError" in err and "raised at" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="nms"):
        main([*argv, "--debug"])
    with pytest.raises(RuntimeError, match="nms"):
        main(["--debug", *argv])
    monkeypatch.undo()
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err  # the user's error: still one line
    assert err.count("\n") == 1 and "nope.pt" in err and "internal error" not in err


def test_train_help_says_what_the_code_does(capsys):
    with pytest.raises(SystemExit):
        main(["train", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    for layout in ("CSV manifest", "Pascal VOC", "COCO", "ImageFolder"):
        assert layout in text.split("--data DATA data set root")[1].split("--out OUT")[0]
    assert "crops" not in text and "horizontal flips" in text
    guidance = text.split("--guidance GUIDANCE")[-1].split("--counterfactuals")[0]
    assert guidance.count("rrr_classes") == 1
    assert "224 for a manifest or ImageFolder and 320 for VOC or COCO" in text
    assert "--guide {masks,boxes,none}" in text


def test_the_start_summary_names_the_objective_and_its_weights():
    from gainx.losses import GAIN
    from gainx.models import SmallCNN
    from gainx.training.summary import objective_line

    model = SmallCNN(3, width=4)
    default = objective_line(GAIN(model, "features", method="gainext"), 1, 63)
    assert default == (
        "objective: GAINext (eq. 8): L_cl + 0 L_am + 0.2 L_e (guidance counterfactual, 32 counterfactual images per "
        "batch of 63, weight 1 moved by group DRO (eta 0.1, at most 4), jitter colour); the attention terms from "
        "epoch 2"
    )
    fixed = objective_line(GAIN(model, "features", method="gainext", counterfactuals=5, counterfactual_eta=0), 0, 64)
    assert "5 counterfactual images per batch of 64, weight 1, jitter" in fixed
    paper = objective_line(GAIN(model, "features", method="gainext", alpha=1.0, omega_e=10.0, guidance="paper"), 0, 8)
    assert paper == "objective: GAINext (eq. 8): L_cl + 1 L_am + 10 L_e (guidance paper)"
    assert objective_line(GAIN(model, "features", method="baseline"), 1, 8) == "objective: baseline, L_cl only"
    attention = objective_line(GAIN(model, "features", am_gradient="attention"), 0, 8)
    assert attention == "objective: GAIN (eq. 6): L_cl + 1 L_am (through the attention only)"
    context = objective_line(GAIN(model, "features", am_fill="context"), 0, 8)
    assert context == "objective: GAIN (eq. 6): L_cl + 1 L_am (erased regions filled from their context)"


def test_debug_is_accepted_after_nested_command_names(tmp_path):
    from gainx.cli import build_parser

    parser = build_parser()
    argv = ["experiment", "bias", "--benchmark", "decoy", "--out", str(tmp_path), "--seeds", "0"]
    assert parser.parse_args(argv).debug is False
    assert parser.parse_args([*argv, "--debug"]).debug is True
    assert parser.parse_args(["--debug", *argv]).debug is True
    assert parser.parse_args(["experiment", "localization", "--out", str(tmp_path), "--debug"]).debug is True
    data = ["data", "decoy", "--out", str(tmp_path / "d"), "--size", "10"]
    with pytest.raises(ValueError, match="image_size must be an int >= 16"):  # the traceback, not the one line
        main([*data, "--debug"])
    with pytest.raises(ValueError, match="image_size must be an int >= 16"):
        main(["data", "--debug", *data[1:]])
    with pytest.raises(ValueError, match="image_size must be an int >= 16"):
        main(["data", "photos", *data[2:], "--debug"])


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--threads", "0", "argument --threads: must be at least 1, got 0"),
        ("--jobs", "0", "argument --jobs: must be at least 1, got 0"),
        ("--epochs", "0", "argument --epochs: must be at least 1, got 0"),
        ("--train-size", "0", "argument --train-size: must be at least 1, got 0"),
        ("--seeds", "-1", "argument --seeds: must be at least 0, got -1"),
        ("--am-warmup", "-1", "argument --am-warmup: must be at least 0, got -1"),
    ],
)
def test_experiment_counts_are_checked_before_any_data_is_written(tmp_path, capsys, flag, value, message):
    argv = ["experiment", "bias", "--benchmark", "decoy", "--out", str(tmp_path / "out"), "--quick", flag, value]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_attention_overlay_names_never_clash(tmp_path, capsys):
    data = write_imagefolder(tmp_path / "photos", {"train": 2}, classes=("house", "dog house", "dog_house"))
    run = tmp_path / "run"
    assert main(_train(data, run, "--image-size", "32")) == 0
    images = [tmp_path / "x.jpg", tmp_path / "x_dog.jpg"]
    for image in images:
        shutil.copy(data / "train" / "house" / "0.jpg", image)
    attention = ["attention", "--checkpoint", str(run / "last.pt")]
    capsys.readouterr()

    def overlays(out: Path) -> list[Path]:
        written = [Path(line.split(" -> ")[1]) for line in capsys.readouterr().out.splitlines()]
        assert len(set(written)) == len(written) and sorted(written) == sorted(out.iterdir())
        return written

    assert main([*attention, str(images[0]), "--out", str(tmp_path / "c1"), "--topk", "3"]) == 0
    assert len(overlays(tmp_path / "c1")) == 3  # "dog house" and "dog_house" both make "dog_house"
    out = tmp_path / "c2"
    assert main([*attention, *map(str, images), "--out", str(out), "--classes", "house", "dog house"]) == 0
    assert len(overlays(out)) == 4  # x + "dog house" and x_dog + "house" both make "x_dog_house"
    assert main([*attention, str(images[0]), "--out", str(out), "--classes", "house", "house"]) == 2
    assert "class names given more than once: ['house']" in capsys.readouterr().err


def test_attention_reads_every_image_before_writing(tmp_path, capsys):
    data = write_imagefolder(tmp_path / "photos", {"train": 2})
    run = tmp_path / "run"
    assert main(_train(data, run, "--image-size", "32")) == 0
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    good = str(data / "train" / "cat" / "0.jpg")
    out = tmp_path / "overlays"
    for bad, message in ((notes, "cannot read image"), (data / "train", "is a folder")):
        capsys.readouterr()
        assert main(["attention", good, str(bad), "--checkpoint", str(run / "last.pt"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and str(bad) in err
        assert not out.exists()


def test_overlay_names_are_safe_and_distinct():
    from gainx.explain import overlay_names

    names = overlay_names(["x", "x_a"], ["a/b", "a b", "b", "../c"], range(4))
    assert names[0] == {0: "x_a_b_0.png", 1: "x_a_b_1.png", 2: "x_b.png", 3: "x_.._c.png"}
    assert names[1] == {0: "x_a_a_b_0.png", 1: "x_a_a_b_1.png", 2: "x_a_b_2.png", 3: "x_a_.._c.png"}
