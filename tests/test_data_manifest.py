"""CSV-manifest layout: contract, guides from masks and boxes, flips, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from gainx.data import IGNORE, IMAGENET_MEAN, IMAGENET_STD, DatasetError, load_dataset

RNG = np.random.default_rng(0)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path.name


def _image(root: Path, name: str, h: int = 12, w: int = 20) -> str:
    _png(root / name, RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
    return name


def _manifest(root: Path, rows: list[str], header: str = "path,labels,split,mask,boxes") -> Path:
    (root / "manifest.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


@pytest.fixture
def simple(tmp_path: Path) -> Path:
    """Single-label manifest: two train images (one with a mask), one test image."""
    _image(tmp_path, "a.png")
    _image(tmp_path, "b.png")
    _image(tmp_path, "c.png")
    label_map = np.zeros((12, 20), np.uint8)
    label_map[2:6, 3:9] = 2  # class 1 = "dog"
    label_map[6, :] = IGNORE
    _png(tmp_path / "a_mask.png", label_map)
    return _manifest(tmp_path, ["a.png,dog,train,a_mask.png,", "b.png,cat,train,,", "c.png,cat,test,,"])


def test_contract_shapes_dtypes_and_values(simple: Path) -> None:
    ds = load_dataset(simple, "train", image_size=(8, 10))
    assert ds.classes == ["cat", "dog"] and ds.multilabel is False
    assert ds.mean == IMAGENET_MEAN and ds.std == IMAGENET_STD and ds.image_size == (8, 10)
    assert len(ds) == 2 and ds.num_guided == 1
    item = ds[0]
    assert item["image"].shape == (3, 8, 10) and item["image"].dtype == torch.float32
    assert item["labels"].tolist() == [0.0, 1.0] and item["labels"].dtype == torch.float32
    assert item["guide"].shape == (2, 8, 10) and item["guide"].dtype == torch.uint8
    assert item["has_guide"].dtype == torch.bool and bool(item["has_guide"]) and item["index"] == 0
    resized = np.asarray(Image.open(simple / "a.png").convert("RGB").resize((10, 8), Image.BILINEAR))
    expected = (
        torch.from_numpy(resized.copy()).permute(2, 0, 1) / 255 - torch.tensor(IMAGENET_MEAN)[:, None, None]
    ) / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(item["image"], expected.float())
    unguided = ds[1]
    assert not bool(unguided["has_guide"]) and int(unguided["guide"].sum()) == 0


def test_default_image_size_and_dataset_json(simple: Path) -> None:
    assert load_dataset(simple, "train").image_size == (224, 224)
    (simple / "dataset.json").write_text(
        json.dumps({"image_size": [6, 14], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1]})
    )
    ds = load_dataset(simple, "train")
    assert ds.image_size == (6, 14) and ds.mean == (0.5, 0.5, 0.5) and ds.std == (0.25, 0.5, 1.0)
    assert ds[0]["image"].shape == (3, 6, 14)
    assert load_dataset(simple, "train", image_size=5).image_size == (5, 5)


def test_mask_guide_resized_nearest_with_ignore(simple: Path) -> None:
    guide = load_dataset(simple, "train", image_size=(24, 40))[0]["guide"].numpy()  # exact 2x upscale
    label_map = np.asarray(Image.open(simple / "a_mask.png")).repeat(2, 0).repeat(2, 1)
    assert (guide[1] == np.where(label_map == IGNORE, IGNORE, label_map == 2)).all()
    assert (guide[0] == np.where(label_map == IGNORE, IGNORE, 0)).all()
    assert int((guide[1] == 1).sum()) == 4 * 4 * 6


def test_binary_mask_on_single_label_row(tmp_path: Path) -> None:
    _image(tmp_path, "a.png")
    binary = np.zeros((12, 20), np.uint8)
    binary[1:4, 10:15] = 255
    _png(tmp_path / "m.png", binary)
    _image(tmp_path, "b.png")
    _manifest(tmp_path, ["a.png,cat,train,m.png,", "b.png,dog,train,,"])
    guide = load_dataset(tmp_path, "train", image_size=(12, 20))[0]["guide"].numpy()
    assert (guide[0] == (binary == 255)).all() and int(guide[1].sum()) == 0


def test_classes_txt_fixes_order_and_multilabel(tmp_path: Path) -> None:
    _image(tmp_path, "a.png")
    _image(tmp_path, "b.png")
    (tmp_path / "classes.txt").write_text("zebra\ncat\ndog\n")
    _manifest(tmp_path, ["a.png,cat;dog,train,,", "b.png,,train,,"])
    ds = load_dataset(tmp_path, "train", image_size=4)
    assert ds.classes == ["zebra", "cat", "dog"] and ds.multilabel is True
    assert ds[0]["labels"].tolist() == [0.0, 1.0, 1.0] and ds[1]["labels"].tolist() == [0.0, 0.0, 0.0]


def _box_reference(box: tuple[float, float, float, float], src: tuple[int, int], out: tuple[int, int]) -> np.ndarray:
    """Pixel (r, c) of the output covers source [c*W/w, (c+1)*W/w) x [...]; inside if it overlaps the box."""
    x0, y0, x1, y1 = box
    ref = np.zeros(out, np.uint8)
    for r in range(out[0]):
        for c in range(out[1]):
            sy, sx = src[0] / out[0], src[1] / out[1]
            if (c + 1) * sx > x0 and c * sx < x1 and (r + 1) * sy > y0 and r * sy < y1:
                ref[r, c] = 1
    return ref


@pytest.mark.parametrize("out", [(12, 20), (7, 9), (30, 50)])
def test_box_guides_scaled(tmp_path: Path, out: tuple[int, int]) -> None:
    _image(tmp_path, "a.png", 12, 20)
    _manifest(tmp_path, ["a.png,cat;dog,train,,cat:2 3 9.5 7;dog:0 0 20 1.5;cat:15 10 16 11"])
    guide = load_dataset(tmp_path, "train", image_size=out)[0]["guide"].numpy()
    cat = _box_reference((2, 3, 9.5, 7), (12, 20), out) | _box_reference((15, 10, 16, 11), (12, 20), out)
    assert (guide[0] == cat).all()
    assert (guide[1] == _box_reference((0, 0, 20, 1.5), (12, 20), out)).all()


def test_collate_and_dataloader(simple: Path) -> None:
    ds = load_dataset(simple, "train", image_size=(8, 10))
    batch = default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 8, 10) and batch["guide"].shape == (2, 2, 8, 10)
    assert batch["has_guide"].tolist() == [True, False] and batch["index"].tolist() == [0, 1]
    (loaded,) = list(DataLoader(ds, batch_size=2))
    torch.testing.assert_close(loaded["image"], batch["image"])


def test_flip_keeps_image_and_guide_aligned(tmp_path: Path) -> None:
    image = np.zeros((10, 16, 3), np.uint8)
    image[2:7, 1:5] = (255, 0, 0)  # the labelled object is the only red area, left of centre
    _png(tmp_path / "a.png", image)
    label_map = np.zeros((10, 16), np.uint8)
    label_map[2:7, 1:5] = 1
    _png(tmp_path / "m.png", label_map)
    _manifest(tmp_path, ["a.png,obj,train,m.png,"])
    ds = load_dataset(tmp_path, "train", image_size=(10, 16), augment=True)
    torch.manual_seed(0)
    flips = set()
    for _ in range(12):
        item = ds[0]
        red = item["image"][0] > item["image"][1] + 1  # red channel clearly above green
        assert torch.equal(red, item["guide"][0] == 1)
        flips.add(bool(red[:, 8:].any()))
    assert flips == {True, False}


# ---- bad input: every error names the offending file (and row) -------------------------------------------


def test_missing_image_and_mask(tmp_path: Path) -> None:
    _manifest(tmp_path, ["gone.png,cat,train,,"])
    with pytest.raises(FileNotFoundError, match=r"gone\.png.*line 2"):
        load_dataset(tmp_path, "train")
    _image(tmp_path, "a.png")
    _manifest(tmp_path, ["a.png,cat,train,,", "a.png,cat,train,nomask.png,"])
    with pytest.raises(FileNotFoundError, match=r"nomask\.png.*line 3"):
        load_dataset(tmp_path, "train")


def test_unreadable_and_truncated_images(tmp_path: Path) -> None:
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    full = tmp_path / "full.png"
    _png(full, RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
    (tmp_path / "cut.png").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _manifest(tmp_path, ["junk.png,cat,train,,", "cut.png,cat,train,,"])
    ds = load_dataset(tmp_path, "train", image_size=8)  # decoding is lazy
    with pytest.raises(DatasetError, match=r"junk\.png.*line 2"):
        ds[0]
    with pytest.raises(DatasetError, match=r"cut\.png.*line 3"):
        ds[1]


def test_wrong_size_mask(tmp_path: Path) -> None:
    _image(tmp_path, "a.png", 12, 20)
    _png(tmp_path / "m.png", np.zeros((12, 21), np.uint8))
    _manifest(tmp_path, ["a.png,cat,train,m.png,"])
    with pytest.raises(DatasetError, match=r"m\.png.*line 2.*21x12.*a\.png.*20x12"):
        load_dataset(tmp_path, "train", image_size=8)[0]


@pytest.mark.parametrize(
    "values, message",
    [
        ((0, 7), r"values \[7\] outside"),
        ((0, 2), r"classes \['dog'\].*not among.*\['cat'\]"),
        ((0, 1, 3), r"values \[3\]"),
    ],
)
def test_mask_values_checked(tmp_path: Path, values: tuple[int, ...], message: str) -> None:
    _image(tmp_path, "a.png", 4, 4)
    label_map = np.resize(np.array(values, np.uint8), (4, 4))
    _png(tmp_path / "m.png", label_map)
    _image(tmp_path, "b.png", 4, 4)
    _manifest(tmp_path, ["a.png,cat,train,m.png,", "b.png,dog,train,,"])
    with pytest.raises(DatasetError, match=rf"m\.png.*line 2.*{message}"):
        load_dataset(tmp_path, "train", image_size=4)[0]


def test_rgb_mask_rejected(tmp_path: Path) -> None:
    _image(tmp_path, "a.png", 4, 4)
    _image(tmp_path, "m.png", 4, 4)
    _manifest(tmp_path, ["a.png,cat,train,m.png,"])
    with pytest.raises(DatasetError, match=r"m\.png.*mode 'RGB'"):
        load_dataset(tmp_path, "train", image_size=4)[0]


def test_unknown_label_with_classes_txt(tmp_path: Path) -> None:
    _image(tmp_path, "a.png")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    _manifest(tmp_path, ["a.png,cat,train,,", "a.png,cow,test,,"])
    with pytest.raises(DatasetError, match=r"manifest\.csv line 3.*\['cow'\].*classes\.txt"):
        load_dataset(tmp_path, "train")


@pytest.mark.parametrize(
    "boxes, message",
    [
        ("cat:1 2 3", "malformed box"),
        ("cat 1 2 3 4", "malformed box"),
        ("cat:1 2 x 4", "malformed box"),
        (":1 2 3 4", "malformed box"),
        ("cat:1 2 3 4;", "malformed box"),
        ("cat:5 2 3 4", "0 <= x0 < x1"),
        ("cat:-1 2 3 4", "0 <= x0 < x1"),
        ("dog:1 2 3 4", "not among the row's labels"),
        ("cow:1 2 3 4", "not among the row's labels"),
    ],
)
def test_malformed_boxes(tmp_path: Path, boxes: str, message: str) -> None:
    _image(tmp_path, "a.png")
    _manifest(tmp_path, [f"a.png,cat,train,,{boxes}", "a.png,dog,test,,"])
    with pytest.raises(DatasetError, match=rf"manifest\.csv line 2.*{message}"):
        load_dataset(tmp_path, "train")


@pytest.mark.parametrize("box", ["0 0 21 5", "0 0 5 12.5"])
def test_box_outside_image(tmp_path: Path, box: str) -> None:
    _image(tmp_path, "a.png", 12, 20)
    _manifest(tmp_path, [f"a.png,cat,train,,cat:{box}"])
    ds = load_dataset(tmp_path, "train", image_size=4)
    with pytest.raises(DatasetError, match=r"line 2.*outside image .*a\.png.*20x12"):
        ds[0]


def test_bad_manifest_structure(tmp_path: Path) -> None:
    _image(tmp_path, "a.png")
    _manifest(tmp_path, ["a.png,cat,train"], header="path,labels")
    with pytest.raises(DatasetError, match=r"manifest\.csv: bad header.*missing \['split'\]"):
        load_dataset(tmp_path, "train")
    _manifest(tmp_path, ["a.png,cat,train,x"], header="path,labels,split,masks")
    with pytest.raises(DatasetError, match=r"unknown \['masks'\]"):
        load_dataset(tmp_path, "train")
    _manifest(tmp_path, ["a.png,cat,train,,,extra"])
    with pytest.raises(DatasetError, match=r"line 2: expected 5 fields"):
        load_dataset(tmp_path, "train")
    _manifest(tmp_path, [])
    with pytest.raises(DatasetError, match=r"manifest\.csv has no rows"):
        load_dataset(tmp_path, "train")


def test_row_level_errors(tmp_path: Path) -> None:
    _image(tmp_path, "a.png")
    _png(tmp_path / "m.png", np.zeros((12, 20), np.uint8))
    _manifest(tmp_path, ["a.png,cat,train,,", "a.png,,train,,"])
    with pytest.raises(DatasetError, match=r"line 3: no labels"):
        load_dataset(tmp_path, "train")
    _manifest(tmp_path, ["a.png,cat;;dog,train,,"])
    with pytest.raises(DatasetError, match=r"line 2: empty label"):
        load_dataset(tmp_path, "train")
    _manifest(tmp_path, ["a.png,cat;cat,train,,"])
    with pytest.raises(DatasetError, match=r"line 2: repeated label"):
        load_dataset(tmp_path, "train")
    _manifest(tmp_path, ["a.png,cat,train,m.png,cat:0 0 1 1"])
    with pytest.raises(DatasetError, match=r"line 2: give either a mask or boxes"):
        load_dataset(tmp_path, "train")


def test_split_without_images_lists_splits(simple: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"manifest\.csv: split 'val' has no images; splits present: \['test', 'train'\]"
    ):
        load_dataset(simple, "val")


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("dataset.json", "{not json", r"cannot read .*dataset\.json"),
        ("dataset.json", '{"image_size": 0}', r"dataset\.json: image_size must hold positive ints"),
        ("dataset.json", '{"std": [1, 0, 1]}', r"dataset\.json: 'std' must be positive"),
        ("dataset.json", '{"mean": [1, 2]}', r"dataset\.json: 'mean' must be a list of 3"),
        ("dataset.json", '{"image_size": 100000}', r"dataset\.json: image_size 100000 is too large"),
        ("dataset.json", '{"image_size": [224, 5000]}', r"dataset\.json: image_size \[224, 5000\] is too large"),
        ("dataset.json", '{"mean": [0.5, NaN, 0.5]}', r"dataset\.json: 'mean' must be a list of 3 finite numbers"),
        ("dataset.json", '{"std": [Infinity, 1, 1]}', r"dataset\.json: 'std' must be a list of 3 finite numbers"),
        ("dataset.json", '{"std": [true, 1, 1]}', r"dataset\.json: 'std' must be a list of 3 finite numbers"),
        ("classes.txt", "cat\ncat\n", r"classes\.txt: duplicate classes \['cat'\]"),
        ("classes.txt", "\n", r"classes\.txt lists no classes"),
    ],
)
def test_bad_side_files(simple: Path, name: str, text: str, message: str) -> None:
    (simple / name).write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(simple, "train")


def test_unknown_layout_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset layout"):
        load_dataset(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"nowhere"):
        load_dataset(tmp_path / "nowhere", "train")


def test_voc_options_rejected_for_manifest(simple: Path) -> None:
    with pytest.raises(ValueError, match=r"manifest dataset; guide= applies to the VOC and COCO layouts only"):
        load_dataset(simple, "train", guide="boxes")
    with pytest.raises(ValueError, match=r"VOC only"):
        load_dataset(simple, "train", voc_split_source="main")


def test_bad_image_size(simple: Path) -> None:
    for bad in (0, (3,), (2, -1), 2.5, True):
        with pytest.raises(DatasetError, match=r"image_size"):
            load_dataset(simple, "train", image_size=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("column", ["path", "mask"])
def test_paths_leaving_the_root_are_refused(tmp_path: Path, column: str) -> None:
    root = tmp_path / "data"
    outside = tmp_path / "outside"
    _image(outside, "o.png")
    _png(outside / "m.png", np.zeros((12, 20), np.uint8))
    _image(root, "a.png")
    _png(root / "m.png", np.zeros((12, 20), np.uint8))
    (root / "link.png").symlink_to(outside / ("o.png" if column == "path" else "m.png"))
    inside = {"path": "a.png", "mask": "m.png"}
    for name in ("../outside/" + ("o.png" if column == "path" else "m.png"), str(outside / "o.png"), "link.png"):
        row = {**inside, column: name}
        _manifest(root, [f"{row['path']},cat,train,{row['mask']},"])
        with pytest.raises(
            DatasetError,
            match=rf"line 2: {'image' if column == 'path' else 'mask'} path .* leaves the dataset folder .*outside",
        ):
            load_dataset(root, "train")
        assert len(load_dataset(root, "train", allow_outside_root=True)) == 1


def test_duplicate_rows_name_their_lines(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        _image(tmp_path, name)
    _manifest(tmp_path, ["a.png,cat,train,,", "b.png,cat,train,,", "./a.png,dog,train,,", "a.png,cat,test,,"])
    with pytest.raises(
        DatasetError, match=r"split 'train' lists the same image more than once: .*a\.png on lines \[2, 4\]"
    ):
        load_dataset(tmp_path, "train")
    assert len(load_dataset(tmp_path, "test")) == 1  # the same image in another split is not a repeat


def test_sixteen_bit_grayscale_png_is_rescaled(tmp_path: Path) -> None:
    wide = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode in ("I;16", "I")  # a real 16-bit PNG
    _manifest(tmp_path, ["g16.png,cat,train,,"])
    ds = load_dataset(tmp_path, "train", image_size=(1, 4))
    pixels = ds[0]["image"] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    expected = torch.tensor([0, 1, 128, 255], dtype=torch.float32) / 255
    assert torch.allclose(pixels, expected.expand(3, 1, 4), atol=1e-5)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (Image.fromarray(np.linspace(0, 1, 240, dtype=np.float32).reshape(12, 20)), r"mode 'F' \(floating-point"),
        (Image.fromarray(np.full((12, 20), 70000, np.int32)), r"mode 'I' with values in \[70000, 70000\]"),
        (Image.fromarray(np.full((12, 20), -1, np.int32)), r"mode 'I' with values in \[-1, -1\]"),
        (Image.new("LAB", (20, 12), (128, 0, 0)), r"mode 'LAB'"),
    ],
    ids=["float", "32-bit", "negative", "lab"],
)
def test_images_pillow_would_mangle_are_refused(tmp_path: Path, image: Image.Image, match: str) -> None:
    """Pillow's RGB conversion clips floats (0..1 turns black), wide integers and CIELab: refused, never guessed."""
    image.save(tmp_path / "odd.tif")
    assert Image.open(tmp_path / "odd.tif").mode == image.mode
    _manifest(tmp_path, ["odd.tif,cat,train,,"])
    ds = load_dataset(tmp_path, "train", image_size=(4, 4))
    with pytest.raises(DatasetError, match=rf"image \S*odd\.tif \(\S*manifest\.csv line 2\) has {match}"):
        ds[0]


@pytest.mark.parametrize("column", ["path", "mask"])
def test_path_with_a_nul_byte_names_the_line(simple: Path, column: str) -> None:
    row = {"path": "b.png", "mask": "a_mask.png", column: "b\x00.png"}
    _manifest(simple, ["a.png,dog,train,,", f"{row['path']},dog,train,{row['mask']},"])
    what = "image path" if column == "path" else "mask path"
    for allow in (False, True):
        with pytest.raises(DatasetError, match=rf"manifest\.csv line 3: {what} 'b\\x00\.png' holds a NUL byte"):
            load_dataset(simple, "train", allow_outside_root=allow)


def test_long_class_list_is_refused_briefly(simple: Path) -> None:
    names = [f"class{i}" for i in range(3000)]
    (simple / "classes.txt").write_text("\n".join(names * 2))
    with pytest.raises(DatasetError) as error:
        load_dataset(simple, "train")
    assert re.fullmatch(r".*classes\.txt: 6000 classes, more than the 254 a uint8 label map holds", str(error.value))


def test_duplicate_classes_are_named_briefly(simple: Path) -> None:
    names = ["cat", "dog", *(f"c{i}" for i in range(100))]
    (simple / "classes.txt").write_text("\n".join(names + names[:9] + ["dog"]))
    with pytest.raises(
        DatasetError, match=r"classes\.txt: duplicate classes \['cat', 'dog', 'c0', 'c1', 'c2'\] and 4 more$"
    ):
        load_dataset(simple, "train")
