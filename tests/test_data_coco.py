"""COCO instances layout: labels from annotations, guides from polygons / RLE / boxes, crowd as ignore."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gainx._extras import MissingExtraError
from gainx.data import IGNORE, DatasetError, load_dataset

mask_api = pytest.importorskip("pycocotools.mask", reason="the COCO layout needs pycocotools (gainx[coco])")

H, W = 16, 20
CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 2, "name": "dog"}]  # class order follows the ids: dog, cat
DOG, CAT = 0, 1


def _rle(mask: np.ndarray) -> dict:
    rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _cat_mask() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[9:14, 12:18] = True
    return m


def _crowd_mask() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[0:3, 0:W] = True
    return m


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.T.ravel().astype(np.int64)  # column-major, runs start with zeros
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": [H, W], "counts": np.diff(np.concatenate([[0], changes])).tolist()}


def build_coco(root: Path, split: str = "train2017", roboflow: bool = False) -> Path:
    images_dir = root / split
    images_dir.mkdir(parents=True, exist_ok=True)
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (W, H), (30, 60, 90)).save(images_dir / name)
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}, {"id": 2, "file_name": "b.jpg"}],
        "categories": CATEGORIES,
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 2, "iscrowd": 0, "bbox": [2, 4, 6, 5],
             "segmentation": [[2, 4, 8, 4, 8, 9, 2, 9]]},
            {"id": 11, "image_id": 1, "category_id": 7, "iscrowd": 0, "bbox": [12, 9, 6, 5],
             "segmentation": _rle(_cat_mask())},
            {"id": 12, "image_id": 1, "category_id": 7, "iscrowd": 1, "bbox": [0, 0, 20, 3],
             "segmentation": _uncompressed_rle(_crowd_mask())},
        ],
    }  # fmt: skip
    if roboflow:
        (images_dir / "_annotations.coco.json").write_text(json.dumps(data))
    else:
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("roboflow", [False, True])
def test_labels_and_mask_guides(tmp_path: Path, roboflow: bool) -> None:
    split = "train" if roboflow else "train2017"
    ds = load_dataset(build_coco(tmp_path, split, roboflow), split, image_size=(H, W))
    assert ds.classes == ["dog", "cat"] and ds.multilabel and len(ds) == 2 and ds.num_guided == 1
    first, second = ds[0], ds[1]
    assert first["labels"].tolist() == [1.0, 1.0] and second["labels"].tolist() == [0.0, 0.0]
    guide = first["guide"].numpy()
    crowd = _crowd_mask()
    assert (guide[:, crowd] == IGNORE).all()  # iscrowd: no supervision there
    assert (guide[CAT][~crowd] == _cat_mask()[~crowd]).all()  # RLE decoded exactly
    assert (
        guide[DOG, 5:9, 3:8].all() and guide[DOG, 10:, :].sum() == 0 and guide[DOG, :, 10:][~crowd[:, 10:]].sum() == 0
    )
    assert not bool(second["has_guide"]) and int(second["guide"].sum()) == 0


def test_guides_resized_and_boxes(tmp_path: Path) -> None:
    root = build_coco(tmp_path)
    small = load_dataset(root, "train2017", image_size=(H // 2, W // 2))[0]["guide"].numpy()
    assert (small[CAT] == np.where(_crowd_mask(), IGNORE, _cat_mask())[1::2, 1::2]).all()
    boxes = load_dataset(root, "train2017", image_size=(H, W), guide="boxes")[0]["guide"].numpy()
    expected = np.zeros((2, H, W), np.uint8)
    expected[DOG, 4:9, 2:8] = 1
    expected[CAT, 9:14, 12:18] = 1  # the crowd box is dropped
    assert (boxes == expected).all()
    assert not torch.any(load_dataset(root, "train2017", guide="none")[0]["has_guide"])


def test_bad_files(tmp_path: Path) -> None:
    root = build_coco(tmp_path)
    with pytest.raises(
        DatasetError, match=r"no COCO annotation file for split 'val2017'; splits present: \['train2017'\]"
    ):
        load_dataset(root, "val2017")
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"annotations\[0\] \(id 10\): category_id 99 is not in 'categories'"):
        load_dataset(root, "train2017")
    data["annotations"] = []
    data["images"][0]["file_name"] = "../../outside.jpg"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"image id 1: file_name '\.\./\.\./outside\.jpg' leaves the dataset folder"):
        load_dataset(root, "train2017")
    path.write_text("{}")
    with pytest.raises(DatasetError, match=r"not a COCO instances file, missing \['images', 'annotations'"):
        load_dataset(root, "train2017")


def test_missing_pycocotools_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = build_coco(tmp_path)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    with pytest.raises(MissingExtraError, match=r"needs 'pycocotools'.*pip install \"gainx\[coco\]\""):
        load_dataset(root, "train2017")
