"""Heatmap overlays and side-by-side attention figures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from gainx.io import atomic_open

if TYPE_CHECKING:
    from torch import Tensor


def denormalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(3, H, W)`` normalized tensor -> ``(H, W, 3)`` uint8 RGB."""
    import torch  # here, not at the top: the server renders heatmaps without loading torch

    image = image.detach().cpu().float()  # numpy has no bfloat16; float16 gains precision
    m = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(3, 1, 1)
    rgb = (image * s + m).clamp(0, 1)
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def heatmap(attention: Tensor | np.ndarray) -> np.ndarray:
    """``(H, W)`` map in [0, 1] -> ``(H, W, 3)`` uint8 jet colours."""
    from matplotlib import colormaps

    if hasattr(attention, "detach"):  # a torch tensor (torch itself is not imported for numpy input)
        attention = attention.detach().cpu().float()  # numpy has no bfloat16
    values = np.clip(np.asarray(attention, dtype=np.float32), 0, 1)
    return (colormaps["jet"](values)[..., :3] * 255).round().astype(np.uint8)


def overlay(rgb: np.ndarray, attention: Tensor | np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the heatmap of ``attention`` over ``rgb`` (both ``(H, W, ...)``)."""
    heat = heatmap(attention)
    return ((1 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)).round().astype(np.uint8)


def save_png(array: np.ndarray, path: str | Path) -> None:
    """Write an RGB uint8 array as PNG, atomically."""
    with atomic_open(path, "wb") as fh:
        Image.fromarray(array).save(fh, format="PNG")


def attention_grid(
    rows: Sequence[Sequence[np.ndarray]],
    row_titles: Sequence[str],
    col_titles: Sequence[str],
    path: str | Path,
    cell_labels: Sequence[Sequence[str]] | None = None,
) -> None:
    """Save a figure whose cells are RGB arrays: one row per image, one column per method;
    ``cell_labels[r][c]`` (optional) is written under cell (r, c)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), len(rows[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.8 * n_cols, 1.8 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            ax = axes[r][c]
            ax.imshow(cell)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(row_titles[r], fontsize=8)
            if cell_labels is not None and cell_labels[r][c]:
                ax.set_xlabel(cell_labels[r][c], fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
