"""Photo-context benchmark: splits, label balance, masks, contexts, determinism, no network."""

from __future__ import annotations

import argparse
import csv
import json
import socket
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gainx._extras import MissingExtraError
from gainx.data import load_dataset
from gainx.data.cli import register
from gainx.data.splits import held_out_split
from gainx.data.synthetic import PHOTOS, SHAPES, write_photos

SIZE, TRAIN, VAL, TEST, FRACTION = 24, 30, 8, 18, 0.2
SPLIT_SIZES = {"train": TRAIN, "train_unbiased": TRAIN, "val": VAL, "test_consistent": TEST, "test_conflicting": TEST}


def _write_offline(out: Path, connects: list[tuple], **kwargs) -> Path:
    """``write_photos`` with every socket connection refused (and recorded in ``connects``)."""

    def refuse(sock: socket.socket, *args: object) -> None:
        connects.append(args)
        raise OSError("network disabled by the test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        return write_photos(out, **kwargs)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    connects: list[tuple] = []
    root = _write_offline(
        tmp_path_factory.mktemp("photos"),
        connects,
        image_size=SIZE,
        seed=5,
        mask_fraction=FRACTION,
        train_size=TRAIN,
        val_size=VAL,
        test_size=TEST,
    )
    assert connects == []  # nothing was fetched: the photographs are the packages' own files
    return root


def _rows(root: Path, split: str) -> list[dict[str, str]]:
    with (root / "manifest.csv").open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == split]


def _pixels(root: Path, path: str) -> np.ndarray:
    return np.asarray(Image.open(root / path)).astype(int)


def _generator(root: Path) -> dict:
    return json.loads((root / "dataset.json").read_text())["generator"]


def test_splits_sizes_and_label_balance(photos: Path) -> None:
    assert (photos / "classes.txt").read_text().split() == list(SHAPES)
    for split, n in SPLIT_SIZES.items():
        rows = _rows(photos, split)
        assert len(rows) == n, split
        counts = Counter(r["labels"] for r in rows)
        assert set(counts) == set(SHAPES) and max(counts.values()) - min(counts.values()) <= 1, (split, counts)
        assert _pixels(photos, rows[0]["path"]).shape == (SIZE, SIZE, 3)
    # the training code validates on "val", never on a test split
    assert held_out_split(sorted(SPLIT_SIZES), "val") == "val"


def test_masks_on_the_intended_images(photos: Path) -> None:
    train, unbiased = _rows(photos, "train"), _rows(photos, "train_unbiased")
    masked = [r["path"] for r in train if r["mask"]]
    assert len(masked) == round(FRACTION * TRAIN)
    # the oracle's split has the same objects, labels and masked images as train
    assert [(r["labels"], bool(r["mask"])) for r in unbiased] == [(r["labels"], bool(r["mask"])) for r in train]
    assert not any(r["mask"] for r in _rows(photos, "val"))
    assert all(r["mask"] for split in ("test_consistent", "test_conflicting") for r in _rows(photos, split))
    ds = load_dataset(photos, "train")
    assert len(ds) == TRAIN and ds.num_guided == len(masked)


def test_masks_cover_exactly_the_objects(photos: Path) -> None:
    """test_consistent and test_conflicting show the same objects on different photos: the pixels that
    agree in both and hold the object's colour are exactly the mask, labelled ``label + 1``."""
    for a, b in zip(_rows(photos, "test_consistent"), _rows(photos, "test_conflicting"), strict=True):
        assert a["labels"] == b["labels"]
        mask = np.asarray(Image.open(photos / a["mask"]))
        assert (np.asarray(Image.open(photos / b["mask"])) == mask).all()
        label = SHAPES.index(a["labels"]) + 1
        on = mask > 0
        assert set(np.unique(mask)) == {0, label} and on.sum() >= 9
        one, other = _pixels(photos, a["path"]), _pixels(photos, b["path"])
        colours = np.unique(one[on], axis=0)
        assert len(colours) == 1, f"{a['path']}: the object is not one solid colour"
        painted = (one == colours[0]).all(-1) & (other == colours[0]).all(-1)
        assert (painted == on).all(), a["path"]
        assert (one[~on] != other[~on]).any(-1).mean() > 0.5  # the context around it differs


def test_contexts_follow_the_splits(photos: Path) -> None:
    gen = _generator(photos)
    assert gen["photos"] == [f"{pkg}:{name}" for pkg, name in PHOTOS]
    contexts = gen["contexts"]
    labels = {split: [SHAPES.index(r["labels"]) for r in _rows(photos, split)] for split in SPLIT_SIZES}
    for split in ("train", "val", "test_consistent"):
        assert contexts[split] == labels[split], split  # bias 1: the label's photo
    assert all(c != y for c, y in zip(contexts["test_conflicting"], labels["test_conflicting"], strict=True))
    independent = contexts["train_unbiased"]
    assert len(independent) == TRAIN and len(set(independent)) >= 4
    assert np.mean([c == y for c, y in zip(independent, labels["train"], strict=True)]) < 0.5


def test_bias_below_one_mixes_contexts(tmp_path: Path) -> None:
    root = write_photos(tmp_path, image_size=16, seed=1, train_size=60, test_size=6, val_size=6, bias=0.5)
    labels = [SHAPES.index(r["labels"]) for r in _rows(root, "train")]
    agree = np.mean([c == y for c, y in zip(_generator(root)["contexts"]["train"], labels, strict=True)])
    assert 0.25 < agree < 0.75


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    kwargs = dict(image_size=16, mask_fraction=0.5, train_size=8, test_size=6, val_size=6)
    a, b, c = (write_photos(tmp_path / name, seed=seed, **kwargs) for name, seed in (("a", 7), ("b", 7), ("c", 8)))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "train/000000.png").read_bytes() != (c / "train/000000.png").read_bytes()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(bias=1.5), r"bias must be in \[0, 1\], got 1.5"),
        (dict(val_size=0), "val_size must be >= 1, got 0"),
        (dict(image_size=8), "image_size must be an int >= 16"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_photos(tmp_path, **kwargs)


def test_missing_scikit_image_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage raises ImportError
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(MissingExtraError, match=r"'scikit-image'.*gainx\[photos\]"):
        write_photos(tmp_path, image_size=16, train_size=2, test_size=2)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="gainx")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["data", "photos", "--out", str(tmp_path), "--size", "20", "--seed", "2", "--mask-fraction", "0.25",
         "--train-size", "8", "--test-size", "4", "--val-size", "3"]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out.strip()
    assert "\n" not in out and str(tmp_path) in out and "train 8 (2 with masks, bias 1)" in out and "val 3" in out
    conflicting = load_dataset(tmp_path, "test_conflicting")
    assert len(conflicting) == 4 and conflicting.num_guided == 4 and conflicting.image_size == (20, 20)


def test_registered_as_a_bias_benchmark(tmp_path: Path) -> None:
    from gainx.experiments.bias import BIAS_BENCHMARKS
    from gainx.experiments.cli import register as register_experiments
    from gainx.experiments.runner import base_data
    from gainx.experiments.specs import BENCHMARKS, Profile

    parser = argparse.ArgumentParser(prog="gainx")
    register_experiments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["experiment", "bias", "--benchmark", "photos", "--out", str(tmp_path / "runs")])
    assert args.benchmark == "photos" and "photos" in BIAS_BENCHMARKS
    bench = BENCHMARKS["photos"]
    assert bench.main_split == "test_conflicting" and bench.has_oracle
    profile = Profile(image_size=16, train_size=60, test_size=6, epochs=1)
    biased, oracle = (base_data(bench, tmp_path, 0, profile, unbiased=u) for u in (False, True))
    agree = {}
    for name, root in (("biased", biased), ("oracle", oracle)):
        labels = [SHAPES.index(r["labels"]) for r in _rows(root, "train")]
        contexts = _generator(root)["contexts"]["train"]
        agree[name] = np.mean([c == y for c, y in zip(contexts, labels, strict=True)])
    assert agree["biased"] == 1.0 and agree["oracle"] < 0.5  # the oracle's train photo is independent of the label


@pytest.mark.parametrize("bad", [{"bias": 2.0}, {"val_size": 0}])
def test_bad_arguments_leave_an_existing_data_set_as_it_was(tmp_path: Path, bad: dict) -> None:
    from gainx.data.synthetic import write_decoy

    out = write_decoy(tmp_path / "d", train_size=4, test_size=2)
    before = (out / "manifest.csv").read_bytes()
    with pytest.raises(ValueError, match="bias must be in|val_size must be"):
        write_photos(out, train_size=4, test_size=2, **bad)
    assert (out / "manifest.csv").read_bytes() == before


def test_a_negative_seed_is_refused_by_the_parser(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "photos", "--out", str(tmp_path / "p"), "--seed", "-1"])
    assert "--seed" in capsys.readouterr().err and not (tmp_path / "p").exists()
