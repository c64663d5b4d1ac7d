"""Attention of trained checkpoints as pictures: overlays for image files (``gainx attention``) and
side-by-side figures of several checkpoints on a data set split."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gainx.attention import attention_maps
from gainx.data import load_dataset
from gainx.data.decode import read_image
from gainx.data.transforms import normalize, resize_rgb
from gainx.models import load_model
from gainx.viz import attention_grid, denormalize, overlay, save_png


def safe_name(name: str) -> str:
    """``name`` as a part of a file name: each run of characters other than ASCII letters, digits, ``_``, ``.``
    and ``-`` (path separators and spaces included) becomes one ``_`` (``dog house``, ``dog/house`` ->
    ``dog_house``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@dataclass(frozen=True)
class Explanation:
    """One overlay written by :func:`explain_files`: the class explained in ``image``, the model's
    probability for it (softmax over classes, or sigmoid for multi-label models) and the overlay's path."""

    image: Path
    class_name: str
    probability: float
    overlay: Path


def overlay_stems(images: Sequence[Path]) -> list[str]:
    """A distinct file-name stem for each image: its own stem, prefixed by as many parent folders as it
    takes to tell it from the others (``a/x.jpg``, ``b/x.jpg`` -> ``a_x``, ``b_x``), then suffixed by its
    extension where only that differs (``x.jpg``, ``x.png`` -> ``x_jpg``, ``x_png``).

    Raises:
        ValueError: an image is given twice, or two images cannot be told apart by name.
    """
    paths = [Path(p).resolve() for p in images]
    twice = sorted(str(p) for p, n in Counter(paths).items() if n > 1)
    if twice:
        raise ValueError(f"images given more than once: {twice}")
    stems = [safe_name(p.stem) for p in paths]
    for depth in range(2, max((len(p.parts) for p in paths), default=1) + 1):
        clashes = Counter(stems)
        if len(clashes) == len(stems):
            break
        stems = [
            safe_name("_".join(p.with_suffix("").parts[-depth:])) if clashes[s] > 1 else s for p, s in zip(paths, stems)
        ]
    clashes = Counter(stems)
    stems = [f"{s}_{safe_name(p.suffix.lstrip('.'))}" if clashes[s] > 1 else s for p, s in zip(paths, stems)]
    clashes = Counter(stems)
    if len(clashes) < len(stems):
        raise ValueError(
            f"images whose overlays would share a file name: {[str(p) for p, s in zip(paths, stems) if clashes[s] > 1]}"
        )
    return stems


def overlay_names(stems: Sequence[str], classes: Sequence[str], candidates: Iterable[int]) -> list[dict[int, str]]:
    """For each image stem, the overlay file name of each class index in ``candidates``:
    ``<stem>_<class>.png``, the class name made safe (:func:`safe_name`). Where names would be the same
    (letter case aside: ``x`` + ``dog house`` and ``x_dog`` + ``house``; ``dog house`` and ``dog_house``),
    each of them gets its class index: ``<stem>_<class>_<index>.png``.

    Raises:
        ValueError: two overlays would still share a file name.
    """
    candidates = list(candidates)
    names = {(i, c): f"{stem}_{safe_name(classes[c])}" for i, stem in enumerate(stems) for c in candidates}
    clashes = Counter(name.casefold() for name in names.values())
    names = {key: f"{name}_{key[1]}" if clashes[name.casefold()] > 1 else name for key, name in names.items()}
    check_distinct_names(names.values())
    return [{c: f"{names[i, c]}.png" for c in candidates} for i in range(len(stems))]


def check_distinct_names(names: Iterable[str]) -> None:
    """``ValueError`` listing the overlay file names that two overlays would share (letter case aside: a
    case-insensitive file system keeps one of them)."""
    names = [str(n) for n in names]
    clashes = Counter(n.casefold() for n in names)
    if len(clashes) < len(names):
        raise ValueError(f"overlays would share file names: {sorted(n for n in names if clashes[n.casefold()] > 1)}")


def explain_files(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out: str | Path,
    topk: int = 1,
    class_names: Sequence[str] | None = None,
    *,
    model: str | None = None,
    trust_model_code: bool = False,
) -> list[Explanation]:
    """Write ``OUT/<image stem>_<class>.png`` overlays at each image's own size; returns what was written.
    Images that share a stem get distinct stems (:func:`overlay_stems`) and names that would clash get the class
    index (:func:`overlay_names`), so no overlay overwrites another. Every image is read, and every name planned,
    before the first overlay is written; an image that cannot be read raises naming it.

    Explains ``class_names`` when given, else each image's ``topk`` classes. The model sees the image resized
    to its input size; the Grad-CAM map (eq. 1-2) is upsampled from the feature map straight to the image's
    original height and width and drawn over the original pixels. ``model`` and ``trust_model_code`` allow
    rebuilding a checkpoint whose model spec is not stock, as in :func:`gainx.models.load_model`.
    """
    net, meta = load_model(checkpoint, model=model, trust_model_code=trust_model_code)
    classes = list(meta["classes"])
    wanted = None
    if class_names:
        unknown = [c for c in class_names if c not in classes]
        if unknown:
            raise ValueError(f"unknown class names {unknown}; {checkpoint} knows {classes}")
        twice = sorted(c for c, n in Counter(class_names).items() if n > 1)
        if twice:
            raise ValueError(f"class names given more than once: {twice}")
        wanted = torch.tensor([[classes.index(c) for c in class_names]])
    paths = [Path(p) for p in images]
    names = overlay_names(overlay_stems(paths), classes, range(len(classes)) if wanted is None else wanted[0].tolist())
    for path in paths:  # every image decodes before any overlay is written; each is read again below
        if path.is_dir():
            raise ValueError(f"{path} is a folder, not an image file")
        read_image(path, "command line")
    h, w = meta["image_size"]
    mean = torch.tensor(meta["mean"]).view(3, 1, 1)
    std = torch.tensor(meta["std"]).view(3, 1, 1)
    written = []
    for path, image_names in zip(paths, names):
        image = read_image(path, "command line")
        original = np.asarray(image, dtype=np.uint8)
        x = normalize(resize_rgb(image, (h, w)), mean, std).unsqueeze(0)
        size = (image.height, image.width)
        scores, maps = attention_maps(net, x, meta["target_layer"], classes=wanted, topk=topk, size=size)
        probs = scores[0].sigmoid() if meta["multilabel"] else scores[0].softmax(0)
        chosen = wanted[0] if wanted is not None else scores[0].topk(topk).indices
        for k, cls in enumerate(chosen.tolist()):
            target = Path(out) / image_names[cls]
            save_png(overlay(original, maps[0, k]), target)
            written.append(Explanation(path, classes[cls], float(probs[cls]), target))
    return written


EXPLAINED = ("predicted", "ground_truth")


def _check_explain(explain: str) -> None:
    if explain not in EXPLAINED:
        raise ValueError(f"explain must be one of {EXPLAINED}, got {explain!r}")


def explained_classes(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, explain: str):
    """``(predicted, shown)``: each image's top-1 class and the class whose map is drawn
    (the prediction for ``explain="predicted"``, ``labels`` for ``"ground_truth"``)."""
    _check_explain(explain)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    return predicted, predicted if explain == "predicted" else labels


Normalization = tuple[Sequence[float], Sequence[float]]  # (mean, std) of the three channels


def renormalized(images: torch.Tensor, given: Normalization, wanted: Normalization) -> torch.Tensor:
    """``(N, 3, H, W)`` images normalized with the ``given`` (mean, std), normalized with the ``wanted`` ones
    instead: each model sees its images as it was trained to (its checkpoint's mean and std)."""
    g_mean, g_std, w_mean, w_std = (torch.tensor(v, dtype=images.dtype).view(1, 3, 1, 1) for v in (*given, *wanted))
    return (images * g_std + g_mean - w_mean) / w_std


def attention_figure(
    checkpoints: dict[str, Path],
    data: Path,
    split: str,
    path: Path,
    count: int = 6,
    row_prefix: str = "",
    explain: str = "predicted",
) -> None:
    """Attention of each run on the first ``count`` images of ``split``; one column per checkpoint, titled by
    its key, rows titled ``row_prefix`` + the (first) ground-truth class name.

    Each cell shows the run's top-1 prediction under the map and, with ``explain="predicted"``, the map of
    that predicted class (a model that reads a shortcut shows it there); ``"ground_truth"`` draws the map of
    the first ground-truth class instead (how well the class's own attention covers the object).
    """
    _check_explain(explain)
    dataset = load_dataset(data, split)
    batch = [dataset[i] for i in range(min(count, len(dataset)))]
    images = torch.stack([b["image"] for b in batch])
    hot = torch.stack([b["labels"] for b in batch])
    labels = hot.argmax(1)
    rgb = [denormalize(img, dataset.mean, dataset.std) for img in images]
    rows = [[im] for im in rgb]
    cell_labels = [[""] for _ in rgb]
    for ckpt in checkpoints.values():
        model, meta = load_model(ckpt)
        inputs = renormalized(images, (dataset.mean, dataset.std), (meta["mean"], meta["std"]))
        predicted, shown = explained_classes(model, inputs, labels, explain)
        _, maps = attention_maps(model, inputs, meta["target_layer"], classes=shown.unsqueeze(1))
        for r, im in enumerate(rgb):
            rows[r].append(overlay(im, maps[r, 0]))
            mark = "right" if hot[r, predicted[r]] > 0.5 else "wrong"
            cell_labels[r].append(f"pred. {dataset.classes[int(predicted[r])]} ({mark})")
    titles = [f"{row_prefix}{dataset.classes[int(c)]}" for c in labels]
    attention_grid(rows, titles, ["image", *checkpoints], path, cell_labels)
