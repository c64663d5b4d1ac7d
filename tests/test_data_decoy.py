"""Decoy-digits benchmark: determinism, masks, and the measured decoy/label correlation."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gainx.data import load_dataset
from gainx.data.cli import register
from gainx.data.synthetic import DECOY_COLORS, write_decoy

SIZE, TRAIN, TEST = 32, 300, 200


@pytest.fixture(scope="module")
def decoy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_decoy(
        tmp_path_factory.mktemp("decoy"), image_size=SIZE, seed=3, mask_fraction=0.1, train_size=TRAIN, test_size=TEST
    )


def _rows(root: Path, split: str) -> list[dict[str, str]]:
    with (root / "manifest.csv").open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == split]


def _decoy_class(root: Path, path: str) -> int:
    """Read the swatch back: the one corner square filled with a single palette colour."""
    geo = json.loads((root / "dataset.json").read_text())["generator"]
    s, m, n = geo["swatch_size"], geo["swatch_margin"], geo["image_size"]
    pixels = np.asarray(Image.open(root / path).convert("RGB")).astype(int)
    found = []
    for cy in (m, n - m - s):
        for cx in (m, n - m - s):
            patch = pixels[cy : cy + s, cx : cx + s].reshape(-1, 3)
            found += [k for k, c in enumerate(DECOY_COLORS) if (patch == c).all()]
    assert len(found) == 1, f"{path}: expected exactly one swatch, found {found}"
    return found[0]


def _agreement(root: Path, split: str) -> tuple[float, int]:
    rows = _rows(root, split)
    decoys = [_decoy_class(root, r["path"]) for r in rows]
    return float(np.mean([d == int(r["labels"]) for d, r in zip(decoys, rows, strict=True)])), len(set(decoys))


def test_decoy_predicts_label_only_where_intended(decoy: Path) -> None:
    for split in ("train", "test_consistent"):
        agreement, _ = _agreement(decoy, split)
        assert agreement == 1.0, split
    agreement, distinct = _agreement(decoy, "test_random")
    assert agreement < 0.2 and distinct == 10  # independent of the label: ~1/10 agree by chance


def test_unbiased_training_swatches_change_nothing_else(decoy: Path, tmp_path: Path) -> None:
    """``bias = 0.1`` (the oracle's data): the training swatch no longer tells the label; every other pixel,
    every test image and every mask are those of the biased data at the same seed."""
    sizes = dict(image_size=SIZE, seed=3, mask_fraction=0.1, train_size=TRAIN, test_size=TEST)
    unbiased = write_decoy(tmp_path, bias=0.1, **sizes)
    agreement, distinct = _agreement(unbiased, "train")
    assert agreement < 0.2 and distinct == 10
    assert json.loads((unbiased / "dataset.json").read_text())["generator"]["bias"] == 0.1
    assert _rows(unbiased, "train") == _rows(decoy, "train")  # same labels and masks
    geo = json.loads((decoy / "dataset.json").read_text())["generator"]
    s, m, n = geo["swatch_size"], geo["swatch_margin"], geo["image_size"]
    corners = np.zeros((n, n), dtype=bool)
    for cy in (m, n - m - s):
        for cx in (m, n - m - s):
            corners[cy : cy + s, cx : cx + s] = True
    for row in _rows(decoy, "train")[:50]:
        a, b = (np.asarray(Image.open(root / row["path"])) for root in (decoy, unbiased))
        assert (a[~corners] == b[~corners]).all(), row["path"]
    for row in _rows(decoy, "test_random"):
        assert Image.open(decoy / row["path"]).tobytes() == Image.open(unbiased / row["path"]).tobytes()
    with pytest.raises(ValueError, match="bias must be in"):
        write_decoy(tmp_path / "bad", bias=1.5, **sizes)


def test_layout_masks_and_fraction(decoy: Path) -> None:
    assert (decoy / "classes.txt").read_text().split() == [str(d) for d in range(10)]
    meta = json.loads((decoy / "dataset.json").read_text())
    assert meta["image_size"] == SIZE and meta["seed"] == 3 and meta["generator"]["train_masked"] == round(0.1 * TRAIN)
    train = load_dataset(decoy, "train")
    assert len(train) == TRAIN and train.num_guided == round(0.1 * TRAIN) and train.image_size == (SIZE, SIZE)
    assert train.classes == [str(d) for d in range(10)] and train.multilabel is False
    for split in ("test_consistent", "test_random"):
        ds = load_dataset(decoy, split)
        assert len(ds) == TEST and ds.num_guided == TEST
    labels = [int(r["labels"]) for r in _rows(decoy, "train")]
    assert np.bincount(labels, minlength=10).min() >= TRAIN // 20  # every digit is represented


def test_masks_cover_the_digit(decoy: Path) -> None:
    ds = load_dataset(decoy, "test_random")
    for i in range(0, TEST, 40):
        item = ds[i]
        k = int(item["labels"].argmax())
        inside = item["guide"][k] == 1
        assert int(item["guide"].sum()) == int(inside.sum()) > 10  # only the labelled channel is marked
        brightness = item["image"].mean(0)
        assert brightness[inside].mean() > brightness[~inside].mean() + 1.0


def _digit_shapes(root: Path, split: str) -> list[bytes]:
    """Each mask cropped to its bounding box: identifies the source digit, whatever the position."""
    shapes = []
    for r in _rows(root, split):
        if r["mask"]:
            m = np.asarray(Image.open(root / r["mask"])) > 0
            ys, xs = np.nonzero(m)
            shapes.append(m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].tobytes() + bytes(m.shape))
    return shapes


def test_train_and_test_digits_are_disjoint(tmp_path: Path) -> None:
    # at 48 px the fingerprint tells all 1797 source digits apart; the sizes cover every source digit
    root = write_decoy(tmp_path, image_size=48, seed=1, mask_fraction=1.0, train_size=1300, test_size=540)
    sources = json.loads((root / "dataset.json").read_text())["generator"]["source_digits"]
    train, test = set(_digit_shapes(root, "train")), _digit_shapes(root, "test_consistent")
    assert len(train) == sources["train"] and len(set(test)) == sources["test"]
    assert sources["train"] + sources["test"] == 1797 and train.isdisjoint(test)
    assert _digit_shapes(root, "test_random") == test  # same digits, only the decoy differs


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    kwargs = dict(image_size=SIZE, mask_fraction=0.5, train_size=40, test_size=20)
    a, b, c = (write_decoy(tmp_path / name, seed=seed, **kwargs) for name, seed in (("a", 7), ("b", 7), ("c", 8)))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "manifest.csv").read_text() != (c / "manifest.csv").read_text()


def test_rewrite_replaces_manifest(tmp_path: Path) -> None:
    write_decoy(tmp_path, image_size=SIZE, train_size=30, test_size=10)
    write_decoy(tmp_path, image_size=SIZE, train_size=20, test_size=5)
    assert len(load_dataset(tmp_path, "train")) == 20 and len(load_dataset(tmp_path, "test_random")) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=8), "image_size must be an int >= 16"),
        (dict(mask_fraction=1.5), r"mask_fraction must be in \[0, 1\]"),
        (dict(train_size=0), "train_size and test_size must be >= 1"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_decoy(tmp_path, **kwargs)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="gainx")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["data", "decoy", "--out", str(tmp_path), "--size", "20", "--seed", "2", "--mask-fraction", "0.25",
         "--train-size", "8", "--test-size", "4", "--bias", "0.5"]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out.strip()
    assert "\n" not in out and str(tmp_path) in out and "train 8 (2 with masks, bias 0.5)" in out
    assert json.loads((tmp_path / "dataset.json").read_text())["generator"]["bias"] == 0.5
    ds = load_dataset(tmp_path, "train")
    assert len(ds) == 8 and ds.num_guided == 2 and ds.image_size == (20, 20)
