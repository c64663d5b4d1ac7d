"""Figures of the experiments: a metric against the annotation budget, and attention maps side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gainx.attention import attention_maps
from gainx.data import load_dataset
from gainx.io import atomic_open
from gainx.training import load_model
from gainx.viz import attention_grid, denormalize, overlay


def budget_figure(rows: list[dict[str, Any]], column: str, ylabel: str, title: str, path: Path) -> None:
    """``column`` (mean ± std over seeds) against the budget for GAINext with masks / boxes;
    the configurations without annotations are horizontal lines, the guidance variants points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for annotation, marker in (("masks", "o"), ("boxes", "s")):
        pts = sorted((r["budget"], r[column]) for r in rows if r["annotation"] == annotation and r["guidance"] == "paper")
        if pts:
            ax.errorbar([100 * b for b, _ in pts], [s["mean"] for _, s in pts], yerr=[s["std"] for _, s in pts],
                        marker=marker, capsize=3, label=f"GAINext, {annotation} (paper L_e)")
    for r in rows:
        if r["annotation"] == "none":
            style = ":" if r["unbiased"] else "--"
            ax.axhline(r[column]["mean"], linestyle=style, color="gray" if r["method"] == "baseline" else "black",
                       label=r["key"] if r["unbiased"] else f"{r['method']} (no annotation)")
        elif r["guidance"] != "paper":
            ax.errorbar([100 * r["budget"]], [r[column]["mean"]], yerr=[r[column]["std"]], marker="^", capsize=3,
                        linestyle="none", label=f"GAINext, {r['annotation']}, {r['guidance']}")
    ax.set_xscale("log")
    ax.set_xlabel("training images with annotation (%)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def attention_figure(checkpoints: dict[str, Path], data: Path, split: str, path: Path, count: int = 6,
                     row_prefix: str = "") -> None:
    """Maps of each image's ground-truth classes (first one) for each run, on the first ``count`` images
    of ``split``; rows are titled ``row_prefix`` + the class name."""
    dataset = load_dataset(data, split)
    batch = [dataset[i] for i in range(min(count, len(dataset)))]
    images = torch.stack([b["image"] for b in batch])
    labels = torch.stack([b["labels"] for b in batch]).argmax(1)
    rgb = [denormalize(img, dataset.mean, dataset.std) for img in images]
    rows = [[im] for im in rgb]
    for ckpt in checkpoints.values():
        model, meta = load_model(ckpt)
        _, maps = attention_maps(model, images, meta["target_layer"], classes=labels.unsqueeze(1))
        for r, im in enumerate(rgb):
            rows[r].append(overlay(im, maps[r, 0]))
    titles = [f"{row_prefix}{dataset.classes[int(c)]}" for c in labels]
    attention_grid(rows, titles, ["image", *(column_title(k) for k in checkpoints)], path)


def column_title(key: str) -> str:
    """``"gainext-masks-0.05-signed"`` -> ``"GAINext masks 5%\nsigned"``; other keys unchanged."""
    parts = key.split("-")
    if parts[0] != "gainext" or len(parts) < 3:
        return key
    title = f"GAINext {parts[1]} {float(parts[2]):.0%}"
    return title + (f"\n{parts[3]}" if len(parts) > 3 else "")
