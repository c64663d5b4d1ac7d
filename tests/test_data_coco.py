"""COCO instances layout: labels from annotations, guides from polygons / RLE / boxes, crowd as ignore."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gainx._extras import MissingExtraError
from gainx.data import IGNORE, DatasetError, coco_segments, load_dataset
from gainx.data.records import Segment

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
    expected[CAT, 9:14, 12:18] = 1
    expected[:, 0:3, :] = IGNORE  # the crowd box: no supervision there, as its pixels with guide="masks"
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


def _rewrite(root: Path, change: Callable[[dict], None], split: str = "train2017") -> None:
    """Apply ``change`` to the instances file of ``split`` in place."""
    path = root / "annotations" / f"instances_{split}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_class_present_only_as_a_crowd_gets_no_false_background_under_its_box(tmp_path: Path) -> None:
    root = build_coco(tmp_path)
    _rewrite(root, lambda d: d["annotations"].pop(1))  # the cat is left only as the crowd instance
    sample = load_dataset(root, "train2017", image_size=(H, W), guide="boxes")[0]
    guide, crowd = sample["guide"].numpy(), _crowd_mask()
    assert sample["labels"].tolist() == [1.0, 1.0] and bool(sample["has_guide"])
    assert (guide[:, crowd] == IGNORE).all() and (guide[CAT][~crowd] == 0).all()
    assert guide[DOG, 4:9, 2:8].all()


def test_symlinked_split_folder_is_outside_the_root(tmp_path: Path) -> None:
    root = build_coco(tmp_path / "data")
    (root / "train2017").rename(tmp_path / "elsewhere")
    (root / "train2017").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match=r"image id 1: file_name 'a\.jpg' leaves the dataset folder .*data"):
        load_dataset(root, "train2017")
    assert len(load_dataset(root, "train2017", allow_outside_root=True)) == 2


def test_file_name_may_leave_the_split_folder_within_the_root(tmp_path: Path) -> None:
    root = build_coco(tmp_path)
    (root / "shared").mkdir()
    (root / "train2017" / "a.jpg").rename(root / "shared" / "a.jpg")
    _rewrite(root, lambda d: d["images"][0].update(file_name="../shared/a.jpg"))
    assert load_dataset(root, "train2017", guide="none").samples[0].image.resolve() == (root / "shared/a.jpg").resolve()


def _triangle_fan(points: int) -> list[float]:
    """A polygon of ``points`` points inside the test image."""
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return np.stack([10 + 5 * np.cos(angles), 8 + 5 * np.sin(angles)], 1).ravel().round(2).tolist()


def test_polygon_over_the_point_limit_is_refused_on_build(tmp_path: Path) -> None:
    root = build_coco(tmp_path)
    too_long = _triangle_fan(coco_segments.MAX_POLYGON_POINTS + 1)
    _rewrite(root, lambda d: d["annotations"][0].update(segmentation=[too_long]))
    message = (
        rf"instances_train2017\.json image id 1 annotation 10: a polygon of {coco_segments.MAX_POLYGON_POINTS + 1} "
        rf"points, more than {coco_segments.MAX_POLYGON_POINTS} \(MAX_POLYGON_POINTS\)"
    )
    with pytest.raises(DatasetError, match=message):
        load_dataset(root, "train2017")
    assert len(load_dataset(root, "train2017", guide="boxes")) == 2  # outlines are only read for mask guides


def test_too_many_annotations_on_one_image_are_refused(tmp_path: Path) -> None:
    root = build_coco(tmp_path)
    box = {"image_id": 2, "category_id": 2, "iscrowd": 0, "bbox": [1, 1, 2, 2]}
    extra = [{**box, "id": 100 + i} for i in range(coco_segments.MAX_ANNOTATIONS_PER_IMAGE + 1)]
    _rewrite(root, lambda d: d["annotations"].extend(extra))
    limit = coco_segments.MAX_ANNOTATIONS_PER_IMAGE
    for guide in ("masks", "boxes"):
        with pytest.raises(DatasetError, match=rf"instances_train2017\.json image id 2: more than {limit} annotations"):
            load_dataset(root, "train2017", guide=guide)


def _ann(segmentation: object, id: int = 5) -> dict:
    return {"id": id, "segmentation": segmentation}


def test_segmentation_limits_at_their_boundaries() -> None:
    limit = coco_segments.MAX_POLYGON_POINTS
    coco_segments.check_segmentations([_ann([[0.0, 0.0] * limit])], "f image id 1")
    with pytest.raises(DatasetError, match=rf"f image id 1 annotation 5: a polygon of {limit + 1} points"):
        coco_segments.check_segmentations([_ann([[0.0, 0.0] * (limit + 1)])], "f image id 1")
    triangle = [0, 0, 1, 0, 1, 1]
    polygons = coco_segments.MAX_POLYGONS_PER_IMAGE
    coco_segments.check_segmentations([_ann([triangle] * (polygons - 1)), _ann([triangle], 6)], "f")
    with pytest.raises(DatasetError, match=rf"f annotation 6: more than {polygons} polygons"):
        coco_segments.check_segmentations([_ann([triangle] * polygons), _ann([triangle], 6)], "f")
    per_polygon = coco_segments.MAX_IMAGE_POINTS // 10
    assert per_polygon <= limit
    coco_segments.check_segmentations([_ann([[0.0, 0.0] * per_polygon] * 10)], "f")
    with pytest.raises(DatasetError, match=r"polygons hold more than .* points \(MAX_IMAGE_POINTS\)"):
        coco_segments.check_segmentations([_ann([[0.0, 0.0] * per_polygon] * 10), _ann([triangle], 6)], "f")


@pytest.mark.parametrize(
    "segmentation, message",
    [
        ([[1, 2, 3, 4]], r"at least 3 points"),
        ([[1, 2, 3, 4, 5, 6, 7]], r"at least 3 points"),
        ([[1, 2, 3, 4, 5, float("nan")]], r"finite numbers"),
        ([[1, 2, 3, 4, 5, "6"]], r"finite numbers"),
        ({"size": [4, 4], "counts": [10]}, r"RLE runs cover 10 pixels, the size \[4, 4\] has 16"),
        ({"size": [4, 4], "counts": [10, 7]}, r"RLE runs cover 17 pixels"),
        ({"size": [4, 4], "counts": [10, -2, 8]}, r"non-negative ints"),
        ({"size": [4, 0], "counts": []}, r"RLE size must be \[height, width\] of positive ints"),
        ({"size": [4, 4], "counts": "P"}, r"end in the middle of a run"),
        ({"size": [4, 4], "counts": "1~"}, r"outside '0'\.\.'o'"),
        ({"size": [4, 4], "counts": "0"}, r"RLE runs cover 0 pixels"),
        ({"counts": [16]}, r"segmentation must be a list of polygons or an RLE dict"),
    ],
)
def test_malformed_outlines_are_named(segmentation: object, message: str) -> None:
    with pytest.raises(DatasetError, match=r"^f annotation 5: .*" + message):
        coco_segments.check_segmentations([_ann(segmentation)], "f")


def test_compressed_rle_decodes_to_the_runs_of_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (16, 20), (64, 48)]:
        mask = rng.random((h, w)) < rng.random()
        counts = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode("ascii")
        runs = coco_segments.decode_rle_string(counts, "f")
        assert runs == _uncompressed_rle(mask)["counts"] and sum(runs) == h * w
        coco_segments.check_rle({"size": [h, w], "counts": counts}, "f")


@pytest.mark.parametrize(
    "counts, covered",
    [([10], 10), ("::", 20), ([65_530, 10], 65_540)],  # "::" is the compressed form of [10, 10]
)
def test_rle_not_covering_the_image_is_refused_on_build(tmp_path: Path, counts: object, covered: int) -> None:
    """Short runs would leave pycocotools' output buffer partly unset; runs past the image would overrun it."""
    root = build_coco(tmp_path)
    Image.new("RGB", (256, 256)).save(root / "train2017" / "b.jpg")
    rle = {"size": [256, 256], "counts": counts}
    _rewrite(root, lambda d: d["annotations"].append({"id": 77, "image_id": 2, "category_id": 7, "segmentation": rle}))
    message = rf"image id 2 annotation 77: RLE runs cover {covered} pixels, the size \[256, 256\] has 65536"
    with pytest.raises(DatasetError, match=r"instances_train2017\.json " + message):
        load_dataset(root, "train2017")


def test_each_class_is_decoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The union of a class's instances is one decode, and equals the union of the instances decoded one by one."""
    root = build_coco(tmp_path)
    polygons = [[2, 4, 8, 4, 8, 9, 2, 9]] + [[x, 10, x + 3, 10, x + 3, 15, x, 15] for x in (1, 6, 13)]
    more_dogs = [{"id": 20 + i, "image_id": 1, "category_id": 2, "segmentation": [p]} for i, p in enumerate(polygons)]
    _rewrite(root, lambda d: d["annotations"].extend(more_dogs[1:]))
    dogs = np.zeros((H, W), bool)
    for p in polygons:
        dogs |= mask_api.decode(mask_api.frPyObjects([p], H, W)).any(-1).astype(bool)
    decoded: list[int] = []
    decode = mask_api.decode
    monkeypatch.setattr(mask_api, "decode", lambda rles: decoded.append(len(rles)) or decode(rles))
    guide = load_dataset(root, "train2017", image_size=(H, W))[0]["guide"].numpy()
    assert decoded == [1, 1, 1]  # dog, cat, crowd: one union each
    crowd = _crowd_mask()
    assert (guide[:, crowd] == IGNORE).all()
    assert (guide[DOG][~crowd] == dogs[~crowd]).all() and (guide[CAT][~crowd] == _cat_mask()[~crowd]).all()


def test_far_away_polygon_point_is_refused_on_decode(tmp_path: Path) -> None:
    """pycocotools walks every edge pixel by pixel: a point 10^5 pixels away would cost memory per pixel walked."""
    root = build_coco(tmp_path)
    _rewrite(root, lambda d: d["annotations"][0].update(segmentation=[[0, 0, 100_000, 0, 0, 10]]))
    ds = load_dataset(root, "train2017")
    with pytest.raises(
        DatasetError,
        match=r"image id 1 annotation 10: polygon points span x 0\.\.100000, y 0\.\.10, more than one image side "
        r"beyond the 20x16",
    ):
        ds[0]


def _zigzag(points: int, width: float) -> list[float]:
    """A polygon of ``points`` points (even) going back and forth between x = 0 and x = ``width`` as y goes
    down the test image: edge length ``points x width`` (each edge spans ``width`` in x, less in y)."""
    xs = np.where(np.arange(points) % 2, width, 0.0)
    return np.stack([xs, np.linspace(0, H - 1, points)], 1).ravel().tolist()


def test_polygon_edge_length_is_bounded_per_image(tmp_path: Path) -> None:
    """pycocotools walks each edge pixel by pixel (at 5x scale): points inside the image still cost per pixel
    walked, so an image's edges are bounded to MAX_EDGE_LENGTH_PER_SIDE x (height + width) in all."""
    limit = coco_segments.MAX_EDGE_LENGTH_PER_SIDE * (H + W)
    assert coco_segments.edge_length(np.reshape(_zigzag(100, W), (-1, 2))) == 100 * W
    root = build_coco(tmp_path)
    half = _zigzag(2 * (limit // (4 * W) + 1), W)  # each of the two under the limit, together over it
    more = {"id": 30, "image_id": 1, "category_id": 2, "segmentation": [half]}
    _rewrite(root, lambda d: (d["annotations"][0].update(segmentation=[half]), d["annotations"].append(more)))
    ds = load_dataset(root, "train2017")
    message = (
        rf"instances_train2017\.json image id 1 annotation 30: the image's polygon edges are [\d.]+ pixels long "
        rf"\(sum of max\(\|dx\|, \|dy\|\)\), more than {coco_segments.MAX_EDGE_LENGTH_PER_SIDE} x \(height \+ width\) "
        rf"= {limit} \(MAX_EDGE_LENGTH_PER_SIDE\)"
    )
    with pytest.raises(DatasetError, match=message):
        ds[0]


def test_polygon_edge_length_limit_at_its_boundary() -> None:
    limit = coco_segments.MAX_EDGE_LENGTH_PER_SIDE * (H + W)
    at_limit = _zigzag(128, limit / 128)
    assert coco_segments.edge_length(np.reshape(at_limit, (-1, 2))) == limit and limit / 128 <= W
    segments = [Segment(0, [at_limit], ann_id=1), Segment(0, {"size": [H, W], "counts": [H * W]}, ann_id=2)]
    coco_segments.check_polygons_on_image(segments, H, W, "f image id 1")
    segments.append(Segment(1, [[0, 0, 1, 0, 0, 1]], crowd=True, ann_id=3))  # crowd outlines count too
    message = rf"^f image id 1 annotation 3: the image's polygon edges are {limit + 3:.1f} pixels long"
    with pytest.raises(DatasetError, match=message):
        coco_segments.check_polygons_on_image(segments, H, W, "f image id 1")


def test_an_instance_without_an_outline_is_no_evidence_of_absence(tmp_path: Path) -> None:
    """With guide="masks", an annotation whose segmentation is empty still labels its class; its box carries no
    supervision (ignore in every channel, as a crowd instance's pixels), not an all-background target."""
    root = build_coco(tmp_path)
    _rewrite(root, lambda d: d["annotations"][1].update(segmentation=[]))  # the cat: a box, no outline
    sample = load_dataset(root, "train2017", image_size=(H, W))[0]
    guide = sample["guide"].numpy()
    assert sample["labels"].tolist() == [1.0, 1.0] and bool(sample["has_guide"])
    assert (guide[:, 9:14, 12:18] == IGNORE).all()  # the cat's bbox [12, 9, 6, 5]
    assert guide[DOG, 5:9, 3:8].all() and (guide[CAT] != 1).all()
    _rewrite(root, lambda d: d["annotations"][1].pop("bbox"))
    with pytest.raises(DatasetError, match=r"annotation 11 has no outline \('segmentation'\) and no valid 'bbox'"):
        load_dataset(root, "train2017")
    _rewrite(root, lambda d: [a.update(segmentation=[], bbox=[1, 1, 2, 2]) for a in d["annotations"]])
    assert not bool(load_dataset(root, "train2017")[0]["has_guide"])  # boxes only: no mask, as before
