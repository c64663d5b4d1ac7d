"""``gainx export`` end to end: checkpoint or model spec -> verified ONNX model + Triton repository."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from gainx.attention import attention_maps
from gainx.cli import main
from gainx.export.cli import register
from gainx.models import build_model
from gainx.runtime import AttentionSession
from gainx.training.checkpoint import save_checkpoint

META = {
    "arch": "small_cnn",
    "num_classes": 3,
    "classes": ["x", "y", "z"],
    "target_layer": "features",
    "image_size": [24, 32],
    "mean": [0.4, 0.5, 0.6],
    "std": [0.2, 0.3, 0.4],
    "multilabel": True,
}


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gainx")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("small_cnn", 3).eval()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"model": model.state_dict(), **META})
    return path, model


def test_cli_export_checkpoint_with_triton_repo(checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, model = checkpoint
    out = tmp_path / "out" / "model.onnx"
    assert (
        _run(
            [
                "export",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
                "--topk",
                "2",
                "--triton-repo",
                str(tmp_path / "repo"),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert f"onnx: {out}" in captured.out
    progress = [line for line in captured.err.splitlines() if line.startswith("gainx export: ")]
    assert any("checking that the attention at features is differentiable" in line for line in progress)
    assert any("tracing the attention graph into ONNX" in line for line in progress)
    verified = re.search(r"verified: max score difference (\S+), max map difference (\S+), on (.+)", captured.err)
    assert verified and float(verified[1]) <= 1e-4 and float(verified[2]) <= 1e-4
    assert "random images, top-k (2 at 24x32)" in verified[3] and "given class_ids (3 at 24x32)" in verified[3]
    session = AttentionSession(out)
    assert session.classes == META["classes"] and session.image_size == (24, 32) and session.topk == 2
    assert session.arch == "small_cnn" and session.multilabel is True and session.mean == META["mean"]
    images = torch.rand(2, 3, 24, 32)
    result = session.run(images)
    normalized = (images - torch.tensor(META["mean"]).view(1, 3, 1, 1)) / torch.tensor(META["std"]).view(1, 3, 1, 1)
    scores, maps = attention_maps(model, normalized, "features", classes=torch.from_numpy(result.classes))
    np.testing.assert_allclose(result.scores, scores.numpy(), atol=1e-4)
    np.testing.assert_allclose(result.attention, maps.numpy(), atol=1e-4)
    repo_model = tmp_path / "repo" / "gainx_attention"
    assert (repo_model / "1" / "model.onnx").read_bytes() == out.read_bytes()
    assert (repo_model / "labels.txt").read_text().split() == META["classes"]


def test_cli_image_size_override_without_verification(checkpoint, tmp_path: Path) -> None:
    ckpt, _ = checkpoint
    out = tmp_path / "m.onnx"
    argv = ["export", "--checkpoint", str(ckpt), "--out", str(out), "--image-size", "40", "48", "--no-verify"]
    assert _run(argv) == 0
    assert AttentionSession(out).image_size == (40, 48)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image-size", "0", "32"], r"image_size must be \(H, W\) with H, W >= 8, got \[0, 32\]"),
        (["--out", "FOLDER"], r"out \S+ is a directory; give the path of the \.onnx file to write"),
    ],
)
def test_cli_bad_arguments_are_named(
    checkpoint, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    ckpt, _ = checkpoint
    extra = [str(tmp_path) if a == "FOLDER" else a for a in extra]
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx"), *extra]) == 2
    err = capsys.readouterr().err
    assert re.search(f"gainx export: error: {message}", err) and "internal error" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_cli_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        _run(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.onnx")])
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_model_spec_with_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", 3).eval()
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "m.onnx"
    argv = ["export", "--model", "small_cnn", "--weights", str(weights), "--classes", "a", "b", "c", "--out", str(out)]
    assert (
        main([*argv, "--image-size", "24", "32", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]) == 0
    )
    assert "target layer: features (the default for small_cnn" in capsys.readouterr().err
    session = AttentionSession(out)
    assert session.classes == ["a", "b", "c"] and session.image_size == (24, 32) and session.mean == [0.5] * 3
    assert session.arch == "small_cnn"
    images = torch.rand(2, 3, 24, 32)
    result = session.run(images, class_ids=np.array([[0, 2], [1, 0]]))
    scores, maps = attention_maps(model, (images - 0.5) / 0.25, "features", classes=torch.from_numpy(result.classes))
    np.testing.assert_allclose(result.scores, scores.numpy(), atol=1e-4)
    np.testing.assert_allclose(result.attention, maps.numpy(), atol=1e-4)


def test_cli_export_factory_spec_with_random_weights_on_purpose(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.onnx"
    spec = "gainx.models.small_cnn:SmallCNN"
    argv = ["export", "--model", spec, "--model-kwargs", '{"width": 4}', "--num-classes", "2", "--out", str(out)]
    assert main([*argv, "--image-size", "16", "16", "--random-weights", "--no-verify"]) == 0
    err = capsys.readouterr().err
    assert f"warning: exporting random weights of {spec}" in err and "target layer: features" in err
    session = AttentionSession(out)
    assert session.classes == ["0", "1"] and session.arch == spec


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "without --weights would export random weights.*--random-weights to export them on purpose"),
        (["--weights", "WEIGHTS", "--random-weights"], "not both"),
        (["--weights", "NOT_TENSORS"], "not a state dict of tensors; entries \\['epochs'\\]"),
        (["--weights", "OTHER_MODEL"], "do not fit SmallCNN: .*shapes differ"),
    ],
)
def test_cli_export_model_spec_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    torch.manual_seed(0)
    files = {
        "WEIGHTS": build_model("small_cnn", 3).state_dict(),
        "NOT_TENSORS": {**build_model("small_cnn", 3).state_dict(), "epochs": 3},
        "OTHER_MODEL": build_model("small_cnn", 5).state_dict(),
    }
    for name, state in files.items():
        torch.save(state, tmp_path / name)
    extra = [str(tmp_path / a) if a in files else a for a in extra]
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "small_cnn", "--num-classes", "3", "--out", str(out), *extra]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


def test_cli_export_needs_a_checkpoint_or_a_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--out", str(tmp_path / "m.onnx")])
    assert "one of the arguments --checkpoint --model is required" in capsys.readouterr().err


def test_cli_export_picks_the_scores_with_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.onnx"
    spec = "test_export_layouts:_DictOutput"  # returns {"logits": ..., "features": ...}; tests/ is on sys.path
    argv = ["export", "--model", spec, "--num-classes", "3", "--random-weights", "--target-layer", "features"]
    argv += ["--image-size", "16", "16", "--out", str(out)]
    assert main(argv) == 2
    assert "gainx export --output" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--output", "logits"]) == 0
    session = AttentionSession(out)
    assert session.arch == spec and session.classes == ["0", "1", "2"]
    assert session.run(torch.rand(2, 3, 16, 16)).attention.shape == (2, 1, 16, 16)
