"""Layout (b): a CSV manifest (see docs/data.md for the format): its reader and its writer.

``root/manifest.csv`` with header ``path,labels,split`` and optional ``mask`` and
``boxes`` columns; optional ``root/classes.txt`` (class list and order) and
``root/dataset.json`` (``image_size``, ``mean``, ``std``). The whole index is
validated when the dataset is built; pixels are decoded lazily.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gainx.data.dataset import GainDataset
from gainx.data.names import check_class_names
from gainx.data.paths import resolve_inside
from gainx.data.records import IMAGENET_MEAN, IMAGENET_STD, Box, DatasetError, Sample, as_size
from gainx.io import atomic_open, atomic_write_text

MANIFEST = "manifest.csv"
CLASSES = "classes.txt"
META = "dataset.json"
REQUIRED_COLUMNS = ("path", "labels", "split")
OPTIONAL_COLUMNS = ("mask", "boxes")
DEFAULT_IMAGE_SIZE = 224


def load_manifest(
    root: Path,
    split: str,
    image_size: int | tuple[int, int] | None = None,
    augment: bool = False,
    allow_outside_root: bool = False,
) -> GainDataset:
    """Build the ``split`` of the manifest dataset in ``root``.

    Image and mask paths must stay inside ``root`` unless ``allow_outside_root``; an image listed twice
    in the split is an error naming both lines.
    """
    manifest = root / MANIFEST
    meta = _read_meta(root / META)
    rows = read_rows(manifest)
    fixed = read_classes(root / CLASSES) if (root / CLASSES).exists() else None
    names = {line: _split_labels(row["labels"], manifest, line) for line, row in rows}
    if fixed is not None:
        known = set(fixed)
        for line, labels in names.items():
            unknown = [n for n in labels if n not in known]
            if unknown:
                raise DatasetError(f"{manifest} line {line}: labels {unknown} are not in {root / CLASSES}")
    classes = fixed if fixed is not None else sorted({n for labels in names.values() for n in labels})
    multilabel = any(len(labels) > 1 for labels in names.values())
    for line, labels in names.items():
        if not labels and not multilabel:
            raise DatasetError(
                f"{manifest} line {line}: no labels (rows without labels are only allowed in multi-label manifests)"
            )
    index = {name: i for i, name in enumerate(classes)}
    samples = [
        _sample(root, manifest, line, row, tuple(index[n] for n in names[line]), index, allow_outside_root)
        for line, row in rows
        if row["split"] == split
    ]
    if not samples:
        splits = sorted({row["split"] for _, row in rows})
        raise DatasetError(f"{manifest}: split {split!r} has no images; splits present: {splits}")
    _refuse_duplicates(manifest, split, [line for line, row in rows if row["split"] == split], samples)
    size = as_size(image_size if image_size is not None else meta.get("image_size", DEFAULT_IMAGE_SIZE))
    return GainDataset(
        samples,
        classes,
        multilabel,
        size,
        augment=augment,
        mean=meta.get("mean", IMAGENET_MEAN),
        std=meta.get("std", IMAGENET_STD),
        binary_masks=True,
    )


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if "image_size" in meta:
        try:
            meta["image_size"] = as_size(meta["image_size"])
        except DatasetError as exc:
            raise DatasetError(f"{path}: {exc}") from None
    for key in ("mean", "std"):
        value = meta.get(key)
        if value is not None and not (
            isinstance(value, list)
            and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        ):
            raise DatasetError(f"{path}: {key!r} must be a list of 3 finite numbers, got {value!r}")
    if any(v <= 0 for v in meta.get("std", [1])):
        raise DatasetError(f"{path}: 'std' must be positive, got {meta['std']!r}")
    return meta


def read_classes(path: Path) -> list[str]:
    """The class names of ``path`` (one per line, blank lines skipped), checked by :func:`check_class_names`."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    classes = [line.strip() for line in lines if line.strip()]
    if not classes:
        raise DatasetError(f"{path} lists no classes")
    check_class_names(classes, str(path))
    bad = [c for c in classes if ";" in c or ":" in c]
    if bad:
        raise DatasetError(f"{path}: class names may not contain ';' or ':': {bad}")
    return classes


def read_rows(manifest: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` for every data row; checks the header."""
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
            if missing or unknown:
                raise DatasetError(
                    f"{manifest}: bad header {header}: missing {missing}, unknown {unknown}; "
                    f"columns are {list(REQUIRED_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)}"
                )
            rows = []
            for row in reader:
                if None in row or any(row[c] is None for c in header):
                    raise DatasetError(f"{manifest} line {reader.line_num}: expected {len(header)} fields")
                rows.append((reader.line_num, {c: row[c].strip() for c in header}))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {manifest}: {exc}") from exc
    if not rows:
        raise DatasetError(f"{manifest} has no rows")
    return rows


def _split_labels(text: str, manifest: Path, line: int) -> list[str]:
    labels = [n.strip() for n in text.split(";")] if text else []
    if any(not n for n in labels):
        raise DatasetError(f"{manifest} line {line}: empty label in {text!r}")
    if len(set(labels)) != len(labels):
        raise DatasetError(f"{manifest} line {line}: repeated label in {text!r}")
    return labels


def _refuse_duplicates(manifest: Path, split: str, lines: list[int], samples: list[Sample]) -> None:
    """An image listed twice in one split would be trained twice per epoch: name the lines."""
    seen: dict[Path, list[int]] = {}
    for line, sample in zip(lines, samples):
        seen.setdefault(sample.image.resolve(), []).append(line)
    repeated = {path: found for path, found in seen.items() if len(found) > 1}
    if repeated:
        listing = "; ".join(f"{path} on lines {found}" for path, found in repeated.items())
        raise DatasetError(f"{manifest}: split {split!r} lists the same image more than once: {listing}")


def _sample(
    root: Path,
    manifest: Path,
    line: int,
    row: dict[str, str],
    labels: tuple[int, ...],
    index: dict[str, int],
    allow_outside_root: bool,
) -> Sample:
    where = f"{manifest} line {line}"
    if not row["path"]:
        raise DatasetError(f"{where}: empty path")
    image = resolve_inside(root, row["path"], where, "image path", allow_outside_root)
    if not image.is_file():
        raise FileNotFoundError(f"image not found: {image} ({where})")
    mask_text, boxes_text = row.get("mask", ""), row.get("boxes", "")
    if mask_text and boxes_text:
        raise DatasetError(f"{where}: give either a mask or boxes, not both")
    mask = resolve_inside(root, mask_text, where, "mask path", allow_outside_root) if mask_text else None
    if mask is not None and not mask.is_file():
        raise FileNotFoundError(f"mask not found: {mask} ({where})")
    boxes = _parse_boxes(boxes_text, where, labels, index) if boxes_text else ()
    return Sample(image=image, labels=tuple(sorted(labels)), origin=where, mask=mask, boxes=boxes)


def _parse_boxes(text: str, where: str, labels: tuple[int, ...], index: dict[str, int]) -> tuple[Box, ...]:
    """``"cat:x0 y0 x1 y1;dog:x0 y0 x1 y1"`` -> boxes (image bounds are checked on decode)."""
    boxes = []
    for item in text.split(";"):
        name, sep, coords = item.rpartition(":")
        try:
            values = [float(v) for v in coords.split()]
        except ValueError:
            values = []
        if not sep or not name.strip() or len(values) != 4:
            raise DatasetError(f"{where}: malformed box {item!r}; expected 'label:x0 y0 x1 y1'")
        name = name.strip()
        if name not in index or index[name] not in labels:
            raise DatasetError(f"{where}: box label {name!r} is not among the row's labels")
        x0, y0, x1, y1 = values
        if not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise DatasetError(f"{where}: box {item!r} needs 0 <= x0 < x1 and 0 <= y0 < y1")
        boxes.append(Box(index[name], x0, y0, x1, y1))
    return tuple(boxes)


def write_manifest(
    out: Path,
    rows: Sequence[Sequence[str]],
    classes: Sequence[str],
    meta: dict[str, Any],
    columns: Sequence[str] = ("path", "labels", "split", "mask"),
) -> Path:
    """Write a manifest data set's ``classes.txt``, ``dataset.json`` and, last and atomically,
    ``manifest.csv`` (so a reader never sees a manifest listing half-written files)."""
    atomic_write_text(out / CLASSES, "".join(f"{c}\n" for c in classes))
    atomic_write_text(out / META, json.dumps(meta, indent=2) + "\n")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    with atomic_open(out / MANIFEST, "w") as fh:
        fh.write(text.getvalue())
    return out
