"""Pascal VOC 2012 layout on a tiny fake VOC tree built with PIL."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from gainx.data import IGNORE, VOC_CLASSES, DatasetError, load_dataset

H, W = 15, 22
DOG, PERSON, CAT = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person"), VOC_CLASSES.index("cat")
# image id -> objects (name, xmin, ymin, xmax, ymax; VOC's 1-based inclusive corners)
OBJECTS = {
    "2008_000001": [("dog", 3, 2, 10, 8), ("person", 12, 1, 22, 15)],
    "2008_000002": [("cat", 1, 1, 5, 5)],
    "2008_000003": [("dog", 2, 2, 4, 4), ("dog", 20, 12, 21, 14)],
}


def _xml(objects: list[tuple[str, int, int, int, int]]) -> str:
    body = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    return f"<annotation><size><width>{W}</width><height>{H}</height><depth>3</depth></size>{body}</annotation>"


def _label_map(objects: list[tuple[str, int, int, int, int]]) -> np.ndarray:
    """Objects painted as their box interiors (class index + 1) with a 1-pixel 255 border."""
    m = np.zeros((H, W), np.uint8)
    for n, a, b, c, d in objects:
        m[b - 1 : d, a - 1 : c] = IGNORE
        m[b : d - 1, a : c - 1] = VOC_CLASSES.index(n) + 1
    return m


def _palette_png(path: Path, label_map: np.ndarray) -> None:
    im = Image.fromarray(label_map, mode="P")
    im.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    im.save(path)


def build_voc(root: Path) -> Path:
    """A VOC2012 folder with 3 images; masks for the first two only."""
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, objects in OBJECTS.items():
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(objects))
    for image_id in list(OBJECTS)[:2]:
        _palette_png(root / "SegmentationClass" / f"{image_id}.png", _label_map(OBJECTS[image_id]))
    (root / "ImageSets/Main/train.txt").write_text("2008_000001\n2008_000002\n2008_000003\n")
    (root / "ImageSets/Main/dog_train.txt").write_text("2008_000001  1\n2008_000002 -1\n")
    (root / "ImageSets/Segmentation/train.txt").write_text("2008_000002\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("2008_000001\n")
    return root


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return build_voc(tmp_path / "VOCdevkit" / "VOC2012")


def test_labels_masks_and_contract(voc: Path) -> None:
    ds = load_dataset(voc, "train", image_size=(H, W))
    assert ds.classes == list(VOC_CLASSES) and ds.multilabel is True and len(ds) == 3 and ds.num_guided == 2
    first = ds[0]
    assert torch.nonzero(first["labels"]).flatten().tolist() == [DOG, PERSON]
    expected = _label_map(OBJECTS["2008_000001"])
    guide = first["guide"].numpy()
    assert guide.shape == (20, H, W) and bool(first["has_guide"])
    for k in range(20):
        assert (guide[k] == np.where(expected == IGNORE, IGNORE, expected == k + 1)).all(), VOC_CLASSES[k]
    assert (guide == IGNORE).any() and (guide[DOG] == 1).any()
    third = ds[2]  # no SegmentationClass png
    assert not bool(third["has_guide"]) and int(third["guide"].sum()) == 0
    batch = default_collate([ds[i] for i in range(3)])
    assert batch["guide"].shape == (3, 20, H, W) and batch["has_guide"].tolist() == [True, True, False]


def test_default_size_and_root_detection(voc: Path) -> None:
    devkit = voc.parent
    assert load_dataset(devkit, "train").image_size == (320, 320)  # VOCdevkit root with VOC2012/
    assert len(load_dataset(devkit.parent, "train", image_size=8)) == 3  # folder holding VOCdevkit/
    assert load_dataset(voc, "train")[0]["image"].shape == (3, 320, 320)


def test_split_sources(voc: Path) -> None:
    assert [s.image.stem for s in load_dataset(voc, "train", 8).samples] == list(OBJECTS)
    seg = load_dataset(voc, "train", 8, voc_split_source="segmentation")
    assert [s.image.stem for s in seg.samples] == ["2008_000002"]
    assert [s.image.stem for s in load_dataset(voc, "val", 8).samples] == ["2008_000001"]  # Main lacks val
    with pytest.raises(DatasetError, match=r"no split list for 'val' in ImageSets/\{Main\}.*main:train"):
        load_dataset(voc, "val", voc_split_source="main")
    with pytest.raises(DatasetError, match=r"no split list for 'test'"):
        load_dataset(voc, "test")
    with pytest.raises(ValueError, match=r"voc_split_source"):
        load_dataset(voc, "train", voc_split_source="Main")


def test_box_guides_from_xml(voc: Path) -> None:
    ds = load_dataset(voc, "train", image_size=(H, W), guide="boxes")
    assert ds.num_guided == 3
    guide = ds[2]["guide"].numpy()
    expected = np.zeros((H, W), np.uint8)
    expected[1:4, 1:4] = 1  # xmin=2..xmax=4 (1-based, inclusive) -> columns 1, 2, 3
    expected[11:14, 19:21] = 1
    assert (guide[DOG] == expected).all() and int(np.delete(guide, DOG, 0).sum()) == 0
    doubled = load_dataset(voc, "train", image_size=(2 * H, 2 * W), guide="boxes")[1]["guide"].numpy()
    assert (doubled[CAT] == np.kron(_label_map(OBJECTS["2008_000002"]) > 0, np.ones((2, 2)))).all()


def test_no_guides(voc: Path) -> None:
    ds = load_dataset(voc, "train", image_size=4, guide="none")
    assert ds.num_guided == 0 and int(ds[0]["guide"].sum()) == 0
    with pytest.raises(ValueError, match=r"guide must be one of"):
        load_dataset(voc, "train", guide="mask")


def test_flip_aligned(voc: Path) -> None:
    ds = load_dataset(voc, "train", image_size=(H, W), augment=True)
    plain = load_dataset(voc, "train", image_size=(H, W))[0]
    torch.manual_seed(1)
    seen = set()
    for _ in range(10):
        item = ds[0]
        flipped = not torch.equal(item["image"], plain["image"])
        if flipped:
            torch.testing.assert_close(item["image"], plain["image"].flip(-1))
        assert torch.equal(item["guide"], plain["guide"].flip(-1) if flipped else plain["guide"])
        seen.add(flipped)
    assert seen == {True, False}


UNICORN = _xml([("unicorn", 1, 1, 2, 2)])
NO_BOX = "<annotation><object><name>cat</name></object></annotation>"
ZERO_BOX = _xml([("cat", 0, 1, 2, 2)])


def test_split_list_that_is_not_utf8_is_named(voc: Path) -> None:
    (voc / "ImageSets/Main/train.txt").write_bytes(b"2008_000001\n\xff\xfe\n")
    with pytest.raises(DatasetError, match=r"cannot read split list .*Main/train\.txt"):
        load_dataset(voc, "train")


@pytest.mark.parametrize(
    "path, content, error, message",
    [
        ("JPEGImages/2008_000002.jpg", None, FileNotFoundError, r"2008_000002\.jpg.*train\.txt"),
        ("Annotations/2008_000003.xml", None, FileNotFoundError, r"2008_000003\.xml"),
        ("Annotations/2008_000001.xml", "<annotation><obj", DatasetError, r"cannot read annotation .*000001\.xml"),
        (
            "Annotations/2008_000002.xml",
            NO_BOX,
            DatasetError,
            r"000002\.xml: object 0 \(cat\) has a missing or malformed",
        ),
        ("Annotations/2008_000002.xml", ZERO_BOX, DatasetError, r"000002\.xml: object 0 \(cat\) has an invalid box"),
        ("ImageSets/Main/train.txt", "\n", DatasetError, r"train\.txt: split 'train' lists no images"),
    ],
)
def test_bad_trees_fail_on_build(voc: Path, path: str, content: str | None, error: type, message: str) -> None:
    if content is None:
        (voc / path).unlink()
    else:
        (voc / path).write_text(content)
    with pytest.raises(error, match=message):
        load_dataset(voc, "train")


def test_bad_files_fail_on_decode(voc: Path) -> None:
    (voc / "Annotations/2008_000002.xml").write_text(_xml([("dog", 1, 1, 5, 5)]))  # mask still says cat
    (voc / "JPEGImages/2008_000003.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    _palette_png(voc / "SegmentationClass/2008_000001.png", np.zeros((H, W + 1), np.uint8))
    (voc / "Annotations/2008_000003.xml").write_text(_xml([("dog", 1, 1, W + 1, 2)]))
    ds = load_dataset(voc, "train", image_size=4)
    with pytest.raises(DatasetError, match=r"2008_000001\.png .*is 23x15 but image .*2008_000001\.jpg is 22x15"):
        ds[0]
    with pytest.raises(
        DatasetError, match=r"000002\.png .*marks classes \['cat'\].*not among the image's labels \['dog'\]"
    ):
        ds[1]
    with pytest.raises(DatasetError, match=r"cannot read image .*2008_000003\.jpg"):
        ds[2]
    boxes = load_dataset(voc, "train", image_size=4, guide="boxes")
    (voc / "JPEGImages/2008_000003.jpg").write_bytes((voc / "JPEGImages/2008_000001.jpg").read_bytes())
    with pytest.raises(DatasetError, match=r"box dog:0 0 23 2 .*2008_000003\.xml.*outside image"):
        boxes[2]


def _custom_voc(root: Path, objects: dict[str, list[tuple[str, int, int, int, int]]], ext: str = ".jpg") -> Path:
    """A labelImg / CVAT style "Pascal VOC XML" export with its own class names."""
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objs in objects.items():
        Image.new("RGB", (W, H), (90, 20, 200)).save(root / "JPEGImages" / f"{image_id}{ext}")
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(objs))
    (root / "ImageSets/Main/train.txt").write_text("".join(f"{i}\n" for i in objects))
    return root


OWN = {"a": [("one", 1, 1, 5, 5)], "b": [("two", 2, 2, 6, 6), ("one", 1, 1, 3, 3)], "c": [("three", 1, 1, 4, 4)]}


def test_own_class_names_from_the_annotations(tmp_path: Path) -> None:
    ds = load_dataset(_custom_voc(tmp_path, OWN, ext=".png"), "train", image_size=4)
    assert ds.classes == ["one", "three", "two"] and ds.multilabel
    assert [torch.nonzero(ds[i]["labels"]).flatten().tolist() for i in range(3)] == [[0], [0, 2], [1]]


@pytest.mark.parametrize(
    "name, text, classes",
    [
        ("classes.txt", "two\nthree\none\nfour\n", ["two", "three", "one", "four"]),
        ("Annotations/classes.txt", "two\nthree\none\n", ["two", "three", "one"]),
        (
            "labelmap.txt",
            "# label:color_rgb:parts:actions\nbackground:0,0,0::\nthree:1,2,3::\ntwo:4,5,6::\none:7,8,9::\n",
            ["three", "two", "one"],
        ),
    ],
)
def test_class_file_fixes_order(tmp_path: Path, name: str, text: str, classes: list[str]) -> None:
    root = _custom_voc(tmp_path, OWN)
    (root / name).write_text(text)
    ds = load_dataset(root, "train", image_size=4, guide="boxes")
    assert ds.classes == classes
    assert torch.nonzero(ds[1]["labels"]).flatten().tolist() == sorted([classes.index("one"), classes.index("two")])
    assert ds[1]["guide"][classes.index("two")].sum() > 0


def test_class_outside_the_class_file(tmp_path: Path) -> None:
    root = _custom_voc(tmp_path, {**OWN, "d": [("unicorn", 1, 1, 2, 2)]})
    (root / "classes.txt").write_text("one\ntwo\nthree\n")
    with pytest.raises(
        DatasetError, match=r"d\.xml: object 0 has unknown class 'unicorn'; classes \(from .*classes\.txt"
    ):
        load_dataset(root, "train")


def test_voc_names_subset_keeps_the_twenty_classes(tmp_path: Path) -> None:
    root = _custom_voc(tmp_path, {"x": [("dog", 1, 1, 5, 5)]})
    assert load_dataset(root, "train").classes == list(VOC_CLASSES)


def _outside_files(outside: Path) -> None:
    """An image, its annotation and its mask in a folder beside the VOC root."""
    outside.mkdir()
    Image.new("RGB", (W, H), (1, 2, 3)).save(outside / "leak.jpg")
    (outside / "leak.xml").write_text(_xml([("cat", 1, 1, 5, 5)]))
    _palette_png(outside / "leak.png", _label_map([("cat", 1, 1, 5, 5)]))


LINKS = {"image": ("JPEGImages", ".jpg"), "annotation": ("Annotations", ".xml"), "mask": ("SegmentationClass", ".png")}


@pytest.mark.parametrize("how", ["dotdot", "absolute", "image", "annotation", "mask"])
def test_split_ids_leaving_the_root_are_refused(tmp_path: Path, how: str) -> None:
    """An id climbing out, an absolute id, or a file of the id symlinked outside (the last three)."""
    voc = build_voc(tmp_path / "VOC2012")
    outside = tmp_path / "outside"
    _outside_files(outside)
    if how in LINKS:
        image_id, (folder, ext) = "2008_000001", LINKS[how]
        (voc / folder / f"{image_id}{ext}").unlink()
        (voc / folder / f"{image_id}{ext}").symlink_to(outside / f"leak{ext}")
    else:
        image_id, folder, ext = "../../outside/leak" if how == "dotdot" else str(outside / "leak"), "JPEGImages", ".jpg"
    (voc / "ImageSets/Main/train.txt").write_text(f"2008_000002\n\n{image_id}\n")
    split_list = voc / "ImageSets/Main/train.txt"
    message = f"{split_list} line 3: {folder} file '{image_id}{ext}' leaves the dataset folder {voc}"
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_dataset(voc, "train")
    sample = load_dataset(voc, "train", allow_outside_root=True).samples[1]
    used = {"JPEGImages": sample.image, "Annotations": None, "SegmentationClass": sample.mask}[folder]
    if used is None:
        assert sample.labels == (CAT,)  # from the outside annotation
    else:
        assert used.resolve() == (outside / f"leak{ext}").resolve()


def test_split_id_inside_the_root_with_dotdot_is_accepted(voc: Path) -> None:
    (voc / "ImageSets/Main/train.txt").write_text("../JPEGImages/2008_000001\n")
    with pytest.raises(
        FileNotFoundError, match=r"annotation not found: .*Annotations/\.\./JPEGImages/2008_000001\.xml"
    ):
        load_dataset(voc, "train")  # inside the root: looked up, not refused


def test_labelmap_duplicates_are_named_briefly(tmp_path: Path) -> None:
    root = _custom_voc(tmp_path, OWN)
    names = [f"c{i}" for i in range(50)]
    (root / "labelmap.txt").write_text("".join(f"{n}:0,0,0::\n" for n in names + names[:7]))
    with pytest.raises(
        DatasetError, match=r"labelmap\.txt: duplicate classes \['c0', 'c1', 'c2', 'c3', 'c4'\] and 2 more$"
    ):
        load_dataset(root, "train")


def test_a_bad_box_in_a_file_no_split_lists_stops_nothing(voc: Path) -> None:
    """The class list is read from every annotation file's object names; a file's boxes are checked only when a
    split that lists it is read."""
    (voc / "Annotations" / "2008_000009.xml").write_text(_xml([("cat", 0, 0, 4, 8)]))  # 0-based: invalid in VOC
    assert len(load_dataset(voc, "train", guide="boxes")) == 3
    (voc / "ImageSets/Main/train.txt").write_text("2008_000001\n2008_000009\n")
    (voc / "JPEGImages" / "2008_000009.jpg").write_bytes((voc / "JPEGImages" / "2008_000001.jpg").read_bytes())
    with pytest.raises(DatasetError, match=r"2008_000009\.xml: object 0 \(cat\) has an invalid box 0,0,4,8"):
        load_dataset(voc, "train", guide="boxes")
