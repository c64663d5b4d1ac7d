"""Listing a data set's splits and picking its held-out (test / validation) split by name."""

from __future__ import annotations

import pytest
from test_data_coco import build_coco  # tests/ is on sys.path under pytest
from test_data_imagefolder import build_imagefolder
from test_data_voc import build_voc

from gainx.data.splits import dataset_splits, held_out_split


def test_splits_of_a_manifest_and_a_voc_tree(decoy_dir, tmp_path):
    assert dataset_splits(decoy_dir) == ["test_consistent", "test_random", "train"]
    assert dataset_splits(build_voc(tmp_path / "voc")) == ["train", "val"]  # not the per-class dog_train list
    assert dataset_splits(tmp_path / "voc" / "JPEGImages") == []  # no known layout
    assert dataset_splits(build_imagefolder(tmp_path / "folders")) == ["train", "val"]  # not masks/
    assert dataset_splits(build_coco(tmp_path / "coco", split="val2017")) == ["val2017"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        dataset_splits(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "splits, test, val",
    [
        (["train", "test", "test_random", "val"], "test", "val"),
        (["train", "test_random", "test_consistent"], "test_consistent", None),  # never validate on a test split
        (["train", "validation"], "validation", "validation"),
        (["train", "extra"], None, None),
    ],
)
def test_held_out_split_by_name(splits, test, val):
    assert held_out_split(splits, "test") == test
    assert held_out_split(splits, "val") == val


def test_held_out_split_purpose_is_checked():
    with pytest.raises(ValueError, match="purpose"):
        held_out_split(["test"], "train")
