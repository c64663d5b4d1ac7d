"""``gainx eval`` and ``gainx cues`` read the data the way the checkpoint's run did: its guide, and data files
outside the data folder only with ``--allow-outside-root``; the cue folder loads as documented."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from folder_helpers import write_imagefolder, write_voc_with_boxes  # tests/ is on sys.path under pytest

import gainx.experiments.cues
from gainx.cli import main
from gainx.data import load_dataset
from gainx.data.manifest import write_manifest


def _train(data: Path, run: Path, *flags: str) -> Path:
    args = ["train", "--data", str(data), "--model", "small_cnn", "--epochs", "1", "--image-size", "32"]
    assert main([*args, "--out", str(run), "--no-progress", "--val-split", "none", "--threads", "1", *flags]) == 0
    return run / "last.pt"


def _photos(root: Path, splits: dict[str, int]) -> Path:
    """An ImageFolder tree of 32-pixel photos whose file names differ across classes (``cat/cat0.jpg``), as
    cue files are named by the image's stem."""
    write_imagefolder(root, splits, size=32)
    for image in root.glob("*/*/*.jpg"):
        image.rename(image.with_name(image.parent.name + image.name))
    return root


def _report(capsys: pytest.CaptureFixture, *args: str) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "--threads", "1"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_scores_against_the_checkpoints_guide_unless_told_otherwise(tmp_path, capsys):
    voc = write_voc_with_boxes(tmp_path / "voc")  # boxes, no masks
    ckpt = _train(voc, tmp_path / "run", "--method", "gainext", "--guide", "boxes")
    data = ["--checkpoint", str(ckpt), "--data", str(voc), "--split", "train"]
    loc = _report(capsys, *data)["localization"]  # the run's boxes
    assert loc["num_maps"] == 4 and 0 <= loc["miou"] <= 1 and 0 <= loc["pointing_game"] <= 1
    loc = _report(capsys, *data, "--guide", "masks")["localization"]
    assert loc["miou"] is None and loc["num_maps"] == 0
    for reason in (loc["miou_undefined"], loc["pointing_game_undefined"]):
        assert reason == (
            "no image of the split carries a mask; 4 of its images have boxes, unused with guide 'masks': "
            "use --guide boxes"
        )
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(tmp_path / "nope"), "--split", "train"]) == 2
    assert "dataset root not found (or not a folder)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not a guide the maps can be scored against
        main(["eval", *data, "--guide", "none"])
    assert "invalid choice: 'none' (choose from 'masks', 'boxes')" in capsys.readouterr().err
    assert main(["eval", "--cues", str(tmp_path), "--data", str(voc), "--split", "train", "--guide", "boxes"]) == 2
    assert "--guide applies to --checkpoint" in capsys.readouterr().err


@pytest.fixture(scope="module")
def listed_outside(tmp_path_factory) -> tuple[Path, Path]:
    """A manifest data set listing images of a sibling folder (``../photos/...``) and a run trained on it."""
    root = tmp_path_factory.mktemp("outside")
    _photos(root / "photos", {"train": 2, "test": 2})
    listed = root / "listed"
    listed.mkdir()
    rows = [
        (f"../photos/{split}/{name}/{name}{i}.jpg", name, split, "")
        for split in ("train", "test")
        for name in ("cat", "dog")
        for i in range(2)
    ]
    write_manifest(listed, rows, ["cat", "dog"], {})
    return listed, _train(listed, root / "run", "--allow-outside-root")


def test_eval_and_cues_read_outside_the_data_folder_only_when_allowed(listed_outside, tmp_path, capsys):
    listed, ckpt = listed_outside
    evaluate = ["eval", "--checkpoint", str(ckpt), "--data", str(listed), "--split", "test", "--threads", "1"]
    cues = ["cues", "--checkpoint", str(ckpt), "--data", str(listed), "--split", "test", "--out", str(tmp_path / "c")]
    for command in (evaluate, cues):
        capsys.readouterr()
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "'../photos/test/cat/cat0.jpg' leaves the dataset folder" in err and "--allow-outside-root" in err
        assert main([*command, "--allow-outside-root"]) == 0
    assert len(list((tmp_path / "c" / "test").glob("*.png"))) == 4


def test_the_cue_folder_loads_with_the_documented_call(listed_outside, tmp_path):
    _, ckpt = listed_outside
    data = _photos(tmp_path / "data", {"test": 1})
    cue_dir = gainx.experiments.cues.write_cues(ckpt, data, "test", tmp_path / "cues")
    documented = re.search(r"``(load_dataset\(cue_dir, split[^`]*\))``", gainx.experiments.cues.__doc__ or "")
    assert documented, "the module docstring names the call that loads a cue folder"
    split = "test"
    cues = eval(documented[1], {"load_dataset": load_dataset, "cue_dir": cue_dir, "split": split})  # noqa: S307
    assert len(cues) == 2 and cues.num_guided == 2 and cues.classes == ["cat", "dog"]


def test_cues_of_a_boxes_run_need_no_mask_decoder(tmp_path, capsys, monkeypatch):
    pytest.importorskip("pycocotools.mask", reason="the COCO fixture writes RLE masks with pycocotools")
    from test_data_coco import build_coco

    coco = build_coco(tmp_path / "coco")
    ckpt = _train(coco, tmp_path / "run", "--guide", "boxes", "--train-split", "train2017")
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)  # the coco extra absent: only masks need it
    command = ["cues", "--checkpoint", str(ckpt), "--data", str(coco), "--split", "train2017"]
    assert main([*command, "--out", str(tmp_path / "cues")]) == 0, capsys.readouterr().err
    assert len(list((tmp_path / "cues" / "train2017").glob("*.png"))) == 2
