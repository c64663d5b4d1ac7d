"""Which data selects best.pt: a validation split, else a stratified, seeded fraction of train held out; never a
test split unless it is named (then with a warning)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from folder_helpers import write_voc_with_boxes  # tests/ is on sys.path under pytest
from PIL import Image

from gainx.data.dataset import GainDataset
from gainx.data.holdout import hold_out, stratified_indices
from gainx.data.records import Sample
from gainx.models import load_checkpoint
from gainx.training import TrainConfig
from gainx.training.trainer import Trainer, train
from gainx.training.validation import validation_split

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
PER_CLASS = {"red": 10, "green": 20, "blue": 10}  # 40 training images, unbalanced


def _bias_folder(root: Path, val: bool = False) -> Path:
    """ImageFolder with ``train`` and ``test_conflicting`` (and ``val`` when asked): solid colours, 8 px."""
    splits = {"train": PER_CLASS, "test_conflicting": {c: 3 for c in COLOURS}} | ({"val": {"red": 2}} if val else {})
    for split, counts in splits.items():
        for cls, count in counts.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                colour = tuple(max(0, v - 3 * i) for v in COLOURS[cls])
                Image.new("RGB", (8, 8), colour).save(root / split / cls / f"{i}.png")
    return root


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data), out=str(out), arch="small_cnn", method="baseline", epochs=1, batch_size=16, image_size=16
    )
    return TrainConfig(**{**base, "progress": False, "augment": False, "device": "cpu", **kw})


def test_auto_never_selects_a_test_split(tmp_path: Path) -> None:
    data = _bias_folder(tmp_path / "data")
    assert validation_split(_cfg(data, tmp_path / "run")) is None  # not test_conflicting
    assert validation_split(_cfg(_bias_folder(tmp_path / "with_val", val=True), tmp_path / "run")) == "val"


def test_best_pt_is_selected_on_a_held_out_fraction_of_train(tmp_path: Path, capsys) -> None:
    data, run = _bias_folder(tmp_path / "data"), tmp_path / "run"
    train(_cfg(data, run, epochs=2))
    best = load_checkpoint(run / "best.pt")
    assert best["best"]["split"] == "10% of train held out" and best["best"]["metric"] == "val_accuracy"
    record = best["validation"]
    assert record["split"] == "train" and record["held_out"]["fraction"] == 0.1 and record["held_out"]["seed"] == 0
    assert record["held_out"]["count"] == 4 and record["held_out"]["total"] == 40
    assert record["held_out"]["indices"] == load_checkpoint(run / "last.pt")["validation"]["held_out"]["indices"]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and all("val accuracy (10% of train held out) " in line for line in lines)


def test_held_out_images_are_not_trained_on_and_are_stratified(tmp_path: Path) -> None:
    data = _bias_folder(tmp_path / "data")
    trainer = Trainer(_cfg(data, tmp_path / "run", val_fraction=0.25), announce=False)
    trained = {s.image for s in trainer.dataset.samples}
    held = {s.image for s in trainer.val.samples}
    assert not trained & held and len(trained | held) == 40 and len(held) == 10
    classes = trainer.dataset.classes
    # 25% of 10 / 20 / 10 is 2.5 / 5 / 2.5: the image left over goes to the first class seen (blue, sorted first)
    assert Counter(classes[s.labels[0]] for s in trainer.val.samples) == {"blue": 3, "green": 5, "red": 2}
    assert not trainer.val.augment and all(s.image.parent.parent.name == "train" for s in trainer.val.samples)
    indices = trainer.validation.record["held_out"]["indices"]
    again = Trainer(_cfg(data, tmp_path / "again", val_fraction=0.25), announce=False)
    assert again.validation.record["held_out"]["indices"] == indices  # the same seed holds out the same images
    other = Trainer(_cfg(data, tmp_path / "other", val_fraction=0.25, seed=1), announce=False)
    assert other.validation.record["held_out"]["indices"] != indices  # another seed, other images


def test_multilabel_images_are_stratified_on_their_first_label() -> None:
    samples = [Sample(Path(f"{i}.png"), labels, f"line {i}") for i, labels in enumerate([(0, 1)] * 10 + [(1,)] * 10)]
    samples += [Sample(Path("none.png"), (), "line 20")] * 10  # no label: a stratum of its own
    dataset = GainDataset(samples, ["a", "b"], multilabel=True, image_size=8)
    rest, held, record = hold_out(dataset, "train", 0.2, seed=0)
    assert Counter(s.labels[:1] for s in held.samples) == {(0,): 2, (1,): 2, (): 2}
    assert len(rest) == 24 and record.describe() == "20% of train held out" and held.multilabel


def test_stratified_indices_keep_each_stratum_share() -> None:
    strata = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    held = stratified_indices(strata, 0.1, seed=3)
    assert Counter(strata[i] for i in held) == {"a": 5, "b": 3, "c": 2}
    assert held == stratified_indices(strata, 0.1, seed=3) and held != stratified_indices(strata, 0.1, seed=4)
    assert len(stratified_indices(["a", "b", "c"], 0.1, seed=0)) == 1  # at least one image
    assert len(stratified_indices(["a", "a"], 0.9, seed=0)) == 1  # at least one image left to train on


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fractions_are_refused(fraction: float) -> None:
    with pytest.raises(ValueError, match=f"strictly between 0 and 1, got {fraction}"):
        stratified_indices(["a"] * 10, fraction, seed=0)


def test_a_named_test_split_is_honoured_with_a_warning(tmp_path: Path) -> None:
    data, run = _bias_folder(tmp_path / "data"), tmp_path / "run"
    with pytest.warns(UserWarning, match="selected on a test split, which biases the numbers then reported"):
        train(_cfg(data, run, val_split="test_conflicting"))
    best = load_checkpoint(run / "best.pt")
    assert best["best"]["split"] == "test_conflicting" and best["validation"] == {"split": "test_conflicting"}


def test_a_val_split_is_preferred_and_fraction_zero_turns_validation_off(tmp_path: Path) -> None:
    data = _bias_folder(tmp_path / "data", val=True)
    trainer = Trainer(_cfg(data, tmp_path / "run"), announce=False)
    assert len(trainer.dataset) == 40 and trainer.validation.record == {"split": "val"}
    train(_cfg(_bias_folder(tmp_path / "noval"), tmp_path / "off", val_fraction=0))
    assert not (tmp_path / "off" / "best.pt").exists()
    assert load_checkpoint(tmp_path / "off" / "last.pt")["validation"] is None


def test_resuming_keeps_the_images_that_select_best_pt(tmp_path: Path) -> None:
    data, run = _bias_folder(tmp_path / "data"), tmp_path / "run"
    train(_cfg(data, run))
    with pytest.raises(ValueError, match=r"on 4 images of 'train' \(fraction 0.1, seed 0\), this run would on 8"):
        train(_cfg(data, run, epochs=2, val_fraction=0.2, resume=True))
    train(_cfg(data, run, epochs=2, resume=True))
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def _voc_trainval(root: Path) -> Path:
    """A VOC tree of 10 images: ``train`` the first 6, ``val`` the last 4, ``trainval`` all of them."""
    voc = write_voc_with_boxes(root, count=10, size=16)
    ids = (voc / "ImageSets/Main/train.txt").read_text().split()
    (voc / "ImageSets/Main/trainval.txt").write_text("\n".join(ids) + "\n")
    (voc / "ImageSets/Main/train.txt").write_text("\n".join(ids[:6]) + "\n")
    (voc / "ImageSets/Main/val.txt").write_text("\n".join(ids[6:]) + "\n")
    return voc


def test_a_named_val_split_sharing_training_images_is_refused(tmp_path: Path) -> None:
    voc = _voc_trainval(tmp_path / "voc")
    with pytest.raises(
        ValueError, match=r"split 'val' shares 4 of its 4 images with the training split 'trainval' \(e\.g\. "
    ):
        Trainer(_cfg(voc, tmp_path / "run", train_split="trainval", val_split="val"), announce=False)
    manifest = tmp_path / "manifest"
    manifest.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8), (10, 200, 30)).save(manifest / name)
    rows = ["a.png,cat,train", "b.png,dog,train", "c.png,cat,val", "./b.png,dog,val"]
    (manifest / "manifest.csv").write_text("\n".join(["path,labels,split", *rows]) + "\n")
    with pytest.raises(
        ValueError, match=r"split 'val' shares 1 of its 2 images with the training split 'train' \(e\.g\. .*b\.png"
    ):
        Trainer(_cfg(manifest, tmp_path / "run", val_split="val"), announce=False)


def test_auto_skips_a_val_split_sharing_training_images_and_says_why(tmp_path: Path, capsys) -> None:
    voc = _voc_trainval(tmp_path / "voc")
    trainer = Trainer(_cfg(voc, tmp_path / "run", train_split="trainval", val_fraction=0.2))
    assert trainer.validation.record["split"] == "trainval" and "held_out" in trainer.validation.record
    assert len(trainer.dataset) == 8 and len(trainer.val) == 2
    err = capsys.readouterr().err
    assert "validation on 20% of trainval held out: 2 images" in err
    assert (
        "--val-split auto skipped split 'val', which shares 4 of its 4 images with the training split 'trainval'" in err
    )
    assert "the run holds out --val-fraction 0.2 of 'trainval' instead" in err
    off = Trainer(_cfg(voc, tmp_path / "off", train_split="trainval", val_fraction=0))
    assert off.validation is None and len(off.dataset) == 10
    err = capsys.readouterr().err
    assert "skipped split 'val'" in err and "the run goes without validation (--val-fraction 0)" in err


def test_a_disjoint_val_split_is_used(tmp_path: Path) -> None:
    voc = _voc_trainval(tmp_path / "voc")
    for val_split in ("auto", "val"):
        trainer = Trainer(_cfg(voc, tmp_path / val_split, val_split=val_split), announce=False)
        assert trainer.validation.record == {"split": "val"} and (len(trainer.dataset), len(trainer.val)) == (6, 4)
