"""The splits a data set folder holds, and which of them is held out for testing or validation.

Split names vary between data sets (``test``, ``test_random`` and ``test_consistent`` in the decoy benchmark,
``val`` in Pascal VOC), so commands that need "the test split" pick it by name: ``test`` itself, else the first
(sorted) name starting with ``test``, else a validation name. Validation takes a validation name only, never a
test split: a model selected on a test split biases the numbers reported on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gainx.data.coco import coco_splits, is_coco
from gainx.data.imagefolder import imagefolder_splits
from gainx.data.manifest import MANIFEST, read_rows
from gainx.data.voc import SPLIT_SOURCES, find_voc_root

VAL_NAMES = ("val", "valid", "validation")


def dataset_splits(root: str | Path) -> list[str]:
    """Sorted split names of the data set at ``root`` (the layouts of :func:`gainx.data.load_dataset`)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root not found (or not a folder): {root}")
    if (root / MANIFEST).is_file():
        return sorted({row["split"] for _, row in read_rows(root / MANIFEST)})
    voc = find_voc_root(root)
    if voc is None:
        return sorted(coco_splits(root)) if is_coco(root) else sorted(imagefolder_splits(root))
    lists = [p for folder in SPLIT_SOURCES.values() for p in (voc / "ImageSets" / folder).glob("*.txt")]
    return sorted({p.stem for p in lists if "_" not in p.stem})  # Main/<class>_<split>.txt are per-class lists


def held_out_split(splits: Sequence[str], purpose: str = "test") -> str | None:
    """The split of ``splits`` to ``purpose`` (``"test"`` or ``"val"``) a model on; None when there is none.

    ``"test"``: a test name, else a validation name; ``"val"``: a validation name (:data:`VAL_NAMES`) only.
    """
    if purpose not in ("test", "val"):
        raise ValueError(f"purpose must be 'test' or 'val', got {purpose!r}")
    vals = [name for name in VAL_NAMES if name in splits]
    if purpose == "val":
        return vals[0] if vals else None
    tests = sorted((s for s in splits if is_test_split(s)), key=lambda s: (s != "test", s))
    ordered = tests + vals
    return ordered[0] if ordered else None


def is_test_split(name: str) -> bool:
    """Whether ``name`` names a test split (it starts with ``test``)."""
    return name.startswith("test")
