"""``gainx experiment bias --data DIR``: the bias comparison on a data set on disk (its own splits and annotations)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from folder_helpers import write_imagefolder, write_voc_with_boxes

from gainx.cli import main as _cli
from gainx.data.manifest import MANIFEST
from gainx.data.synthetic import write_cooccur
from gainx.experiments.bias import run_bias_data
from gainx.experiments.specs import Profile

TINY = Profile(image_size=16, train_size=24, test_size=8, epochs=1, batch_size=8)
KEYS = ["baseline", "gain", "gainext", "recipe-default", "baseline-unbiased-data"]


def _user_manifest(root: Path) -> Path:
    """A user's manifest data set: the co-occurrence benchmark (a quarter of train masked) plus a
    ``train_unbiased`` split drawn without the bias, listed in the same manifest."""
    sizes = dict(image_size=16, seed=0, train_size=24, test_size=8, mask_fraction=0.25)
    write_cooccur(root, **sizes)
    write_cooccur(root / "unbiased", bias=1.0 / 6, **sizes)
    with (root / "unbiased" / MANIFEST).open(newline="") as fh:
        extra = [row for row in csv.DictReader(fh) if row["split"] == "train"]
    with (root / MANIFEST).open("a", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        for row in extra:
            mask = f"unbiased/{row['mask']}" if row["mask"] else ""
            writer.writerow([f"unbiased/{row['path']}", row["labels"], "train_unbiased", mask])
    return root


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    return _user_manifest(tmp_path_factory.mktemp("user") / "data")


def test_bias_on_user_data_runs_every_variant_and_the_oracle(user_data, tmp_path, capsys):
    argv = ["experiment", "bias", "--data", str(user_data), "--out", str(tmp_path), "--seeds", "0"]
    argv += ["--consistent-split", "test_consistent", "--conflicting-split", "test_conflicting"]
    argv += ["--oracle-split", "train_unbiased", "--epochs", "1"]
    assert _cli(argv) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert [r["key"] for r in report["table"]] == KEYS
    assert report["splits"] == {"conflicting": "test_conflicting", "consistent": "test_consistent"}
    runs = {r["key"]: r for r in report["runs"]}
    for run in runs.values():
        assert 0.0 <= run["test_conflicting"]["accuracy"] <= 1.0 and 0.0 <= run["test_consistent"]["accuracy"] <= 1.0
        assert set(run["evidence"]) >= {"gt_object", "gt_background"}
    # GAINext and the recipe train on the data's own masks: a quarter of the training images
    assert runs["gainext"]["budget"] == pytest.approx(0.25) and runs["gainext"]["annotation"] == "data"
    assert runs["recipe-default"]["preset"] == "default"
    # the oracle trained on the bias-free split, the others on train
    configs = {
        key: json.loads((tmp_path / "runs" / "data" / f"{key}-seed0" / "result.json").read_text()) for key in KEYS
    }
    assert configs["baseline-unbiased-data"]["unbiased"] is True
    md = (tmp_path / "results.md").read_text()
    assert "recipe `default` (gainext)" in md and "trained on unbiased data" in md
    assert "25.0% of the training images" in md and "oracle skipped" not in md
    assert "the oracle is the baseline trained on 'train_unbiased'" in md and "every run trains 1 epoch." in md
    assert (tmp_path / "data_attention.png").stat().st_size > 0
    assert "acc. bias-conflicting (test_conflicting)" in capsys.readouterr().out


def test_bias_on_user_data_trains_the_oracle_on_its_split(user_data, tmp_path):
    import torch

    report = run_bias_data(
        user_data,
        tmp_path,
        "test_consistent",
        "test_conflicting",
        oracle_split="train_unbiased",
        seeds=[0],
        guidances=[],
        recipes=(),
        references=("baseline", "oracle"),
        profile=TINY,
    )
    assert [r["key"] for r in report["table"]] == ["baseline", "baseline-unbiased-data"]
    splits = {
        key: torch.load(tmp_path / "runs" / "data" / f"{key}-seed0" / "last.pt", weights_only=False)["config"][
            "train_split"
        ]
        for key in ("baseline", "baseline-unbiased-data")
    }
    assert splits == {"baseline": "train", "baseline-unbiased-data": "train_unbiased"}


def test_without_an_oracle_split_the_oracle_is_skipped_with_a_note(user_data, tmp_path, capsys):
    report = run_bias_data(
        user_data,
        tmp_path,
        "test_consistent",
        "test_conflicting",
        seeds=[0],
        guidances=[],
        recipes=(),
        references=("baseline", "oracle"),
        profile=TINY,
    )
    assert [r["key"] for r in report["table"]] == ["baseline"]
    assert "oracle skipped" in (tmp_path / "results.md").read_text() and "--oracle-split" in report["notes"][1]
    assert "oracle skipped" in capsys.readouterr().out


def test_imagefolder_without_annotations_compares_the_references(tmp_path, capsys):
    data = write_imagefolder(tmp_path / "folder", {"train": 6, "test_a": 2, "test_b": 2}, size=16)
    kwargs = dict(seeds=[0], references=("baseline",), profile=TINY, image_size=16)
    report = run_bias_data(data, tmp_path / "out", "test_a", "test_b", guidances=[], recipes=(), **kwargs)
    assert [r["key"] for r in report["table"]] == ["baseline"]
    assert "not measured" in report["notes"][-1]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())  # strict JSON: no NaN
    assert saved["table"][0]["miou"]["mean"] is None
    with pytest.raises(ValueError, match=r"no image of the training split 'train' has a mask or boxes"):
        run_bias_data(data, tmp_path / "out2", "test_a", "test_b", guidances=["paper"], **kwargs)


def test_missing_splits_are_named(user_data, tmp_path, capsys):
    with pytest.raises(ValueError) as err:
        run_bias_data(user_data, tmp_path, "test_consistent", "test_shifted", oracle_split="clean", profile=TINY)
    message = str(err.value)
    assert "'test_shifted' (--conflicting-split)" in message and "'clean' (--oracle-split)" in message
    assert "test_conflicting, test_consistent, train, train_unbiased" in message and str(user_data) in message
    with pytest.raises(ValueError, match="must differ"):
        run_bias_data(user_data, tmp_path, "test_consistent", "test_consistent", profile=TINY)
    base = ["experiment", "bias", "--out", str(tmp_path)]
    assert _cli([*base, "--data", str(user_data), "--consistent-split", "test_consistent"]) == 2
    assert "--data needs --conflicting-split" in capsys.readouterr().err
    assert _cli([*base, "--benchmark", "decoy", "--oracle-split", "train_unbiased"]) == 2
    assert "--oracle-split name splits of --data DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one source at a time
        _cli([*base, "--benchmark", "decoy", "--data", str(user_data)])


def test_every_run_fine_tunes_from_the_given_weights(user_data, tmp_path, capsys):
    import torch

    from gainx.models import build_model

    start = build_model("small_cnn", 4)
    torch.save(start.state_dict(), tmp_path / "start.pt")
    argv = ["experiment", "bias", "--data", str(user_data), "--out", str(tmp_path / "out"), "--seeds", "0"]
    argv += ["--consistent-split", "test_consistent", "--conflicting-split", "test_conflicting", "--epochs", "1"]
    argv += ["--references", "baseline", "--recipes", "--guidances", "--model", "small_cnn"]
    argv += ["--weights", str(tmp_path / "start.pt")]
    assert _cli(argv) == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["model"] == f"small_cnn fine-tuned from {tmp_path / 'start.pt'}"
    assert report["model"] in (tmp_path / "out" / "results.md").read_text().splitlines()[0]
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")  # weights of another network: refused
    argv[argv.index("--out") + 1], argv[-1] = str(tmp_path / "out2"), str(tmp_path / "other.pt")
    capsys.readouterr()
    assert _cli(argv) == 2
    assert "other.pt" in capsys.readouterr().err


def _multilabel_manifest(root: Path) -> Path:
    """A manifest data set whose every image holds a circle and a square, each with its box."""
    from PIL import Image, ImageDraw

    rows = ["path,labels,split,boxes"]
    for split, count in (("train", 4), ("test_consistent", 2), ("test_conflicting", 2)):
        for i in range(count):
            image = Image.new("RGB", (16, 16), (20 * i, 40, 80))
            draw = ImageDraw.Draw(image)
            draw.ellipse((1, 1, 7, 7), fill=(250, 250, 250))
            draw.rectangle((9, 9, 14, 14), fill=(250, 0, 0))
            (root / split).mkdir(parents=True, exist_ok=True)
            image.save(root / split / f"{i}.png")
            rows.append(f"{split}/{i}.png,circle;square,{split},circle:1 1 8 8;square:9 9 15 15")
    (root / MANIFEST).write_text("\n".join(rows) + "\n")
    return root


def test_multilabel_data_is_scored_by_map(tmp_path, capsys):
    data = _multilabel_manifest(tmp_path / "multi")
    argv = ["experiment", "bias", "--data", str(data), "--out", str(tmp_path / "out"), "--seeds", "0"]
    argv += ["--consistent-split", "test_consistent", "--conflicting-split", "test_conflicting", "--epochs", "1"]
    argv += ["--references", "baseline", "--recipes", "--image-size", "16"]
    assert _cli(argv) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["key"] for r in report["table"]] == ["baseline", "gainext"]
    for row in report["table"]:
        assert 0.0 <= row["map_conflicting"]["mean"] <= 1.0 and 0.0 <= row["map_consistent"]["mean"] <= 1.0
        assert "acc_conflicting" not in row
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| mAP bias-conflicting (test_conflicting) | mAP bias-consistent (test_consistent) |" in md
    # the signed evidence reads single-label images: none here, so it is skipped with a note
    assert "evidence_table" not in report and "Signed evidence" not in md
    assert "signed evidence not measured: no single-label image of the split 'test_conflicting'" in md


def _strict_json(path: Path) -> dict:
    """``path`` read as strict JSON: a bare NaN (not JSON) fails."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path} holds {constant}, not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_run_is_scored_on_test_splits_named_later_and_not_reused_for_other_data(user_data, tmp_path):
    kwargs = dict(seeds=[0], guidances=[], recipes=(), references=("baseline",), profile=TINY)
    run_bias_data(user_data, tmp_path, "test_consistent", "test_conflicting", **kwargs)
    run = tmp_path / "runs" / "data" / "baseline-seed0"
    stamp = (run / "last.pt").stat().st_mtime_ns
    report = run_bias_data(user_data, tmp_path, "test_consistent", "train_unbiased", **kwargs)
    assert (run / "last.pt").stat().st_mtime_ns == stamp  # scored on the split named now, not trained again
    assert 0.0 <= report["runs"][0]["train_unbiased"]["accuracy"] <= 1.0
    stored = json.loads((run / "result.json").read_text())
    assert stored["train_unbiased"] == report["runs"][0]["train_unbiased"] and "test_conflicting" in stored
    # the same data by another path is the same data; a copy elsewhere is other data
    run_bias_data(os.path.relpath(user_data), tmp_path, "test_consistent", "test_conflicting", **kwargs)
    other = shutil.copytree(user_data, tmp_path / "other")
    with pytest.raises(ValueError, match="baseline-seed0 holds a run trained with other settings") as err:
        run_bias_data(other, tmp_path, "test_consistent", "test_conflicting", **kwargs)
    assert f"data {str(user_data.resolve())!r} there, {str(other.resolve())!r} asked" in str(err.value)


def test_box_only_voc_trains_on_its_boxes(tmp_path):
    voc = write_voc_with_boxes(tmp_path / "voc", count=8, size=24)
    ids = (voc / "ImageSets/Main/train.txt").read_text()
    for split in ("consistent", "conflicting"):  # VOC split lists: no "_" (Main/<class>_<split>.txt)
        (voc / "ImageSets/Main" / f"{split}.txt").write_text(ids)
    kwargs = dict(seeds=[0], guidances=["paper"], recipes=(), references=(), profile=TINY, image_size=16)
    report = run_bias_data(voc, tmp_path / "out", "consistent", "conflicting", **kwargs)
    assert [r["key"] for r in report["table"]] == ["gainext"] and report["runs"][0]["budget"] == 1.0
    assert "trained on 'train' with its boxes (no image has a mask)" in report["description"]
    assert (
        json.loads((tmp_path / "out" / "runs" / "data" / "gainext-seed0" / "config.json").read_text())["guide"]
        == "boxes"
    )


def test_every_result_file_is_strict_json(tmp_path):
    data = write_imagefolder(tmp_path / "folder", {"train": 6, "test_a": 2, "test_b": 2}, size=16)
    kwargs = dict(seeds=[0], guidances=[], recipes=(), references=("baseline",), profile=TINY, image_size=16)
    report = run_bias_data(data, tmp_path / "out", "test_a", "test_b", **kwargs)  # no masks: no localization
    result = _strict_json(tmp_path / "out" / "runs" / "data" / "baseline-seed0" / "result.json")
    assert result["test_b"]["miou"] is None and _strict_json(tmp_path / "out" / "results.json")["runs"]
    again = run_bias_data(data, tmp_path / "out", "test_a", "test_b", **kwargs)  # reused: read back as NaN
    assert again["table"][0]["acc_conflicting"] == report["table"][0]["acc_conflicting"]
