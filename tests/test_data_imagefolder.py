"""torchvision ImageFolder layout per split, with optional masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gainx.data import DatasetError, load_dataset

H, W = 6, 8


def build_imagefolder(root: Path) -> Path:
    for split, cls, name in [
        ("train", "cat", "1.jpg"),
        ("train", "cat", "2.PNG"),
        ("train", "ant", "3.png"),
        ("val", "bee", "4.jpg"),
        ("val", "cat", "5.jpg"),
    ]:
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H), (10, 20, 30)).save(root / split / cls / name)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    mask = np.zeros((H, W), np.uint8)
    mask[1:4, 2:6] = 255
    (root / "masks" / "train" / "cat").mkdir(parents=True)
    Image.fromarray(mask).save(root / "masks" / "train" / "cat" / "1.png")
    return root


def test_classes_labels_and_masks(tmp_path: Path) -> None:
    root = build_imagefolder(tmp_path)
    train = load_dataset(root, "train", image_size=(H, W))
    assert train.classes == ["ant", "bee", "cat"] and not train.multilabel  # every split's class folders, sorted
    assert [s.image.name for s in train.samples] == ["3.png", "1.jpg", "2.PNG"]
    assert [int(train[i]["labels"].argmax()) for i in range(3)] == [0, 2, 2] and train.num_guided == 1
    guide = train[1]["guide"].numpy()
    assert guide[2, 1:4, 2:6].all() and guide[2].sum() == 12 and guide[:2].sum() == 0  # binary mask -> its class
    assert [int(x["labels"].argmax()) for x in load_dataset(root, "val", image_size=4)] == [1, 2]


def test_unknown_split_and_symlink_out(tmp_path: Path) -> None:
    root = build_imagefolder(tmp_path / "data")
    with pytest.raises(DatasetError, match=r"no split folder 'test'.*splits present: \['train', 'val'\]"):
        load_dataset(root, "test")
    Image.new("RGB", (W, H)).save(tmp_path / "outside.png")
    (root / "val" / "bee" / "6.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(DatasetError, match=r"val/bee/6\.png: image .* leaves the dataset folder"):
        load_dataset(root, "val")
    assert len(load_dataset(root, "val", allow_outside_root=True)) == 3
