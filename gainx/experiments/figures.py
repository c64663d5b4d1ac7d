"""Figures of the experiments: a metric against the annotation budget; column titles of the attention figures
(drawn by :func:`gainx.explain.attention_figure`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gainx.io import atomic_open


def budget_figure(rows: list[dict[str, Any]], column: str, ylabel: str, title: str, path: Path) -> None:
    """``column`` (mean ± std over seeds) against the budget for GAINext with masks / boxes;
    the configurations without annotations are horizontal lines, the guidance variants points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for annotation, marker in (("masks", "o"), ("boxes", "s")):
        pts = sorted(
            (r["budget"], r[column])
            for r in rows
            if r["annotation"] == annotation and r["guidance"] == "paper" and not r.get("preset")
        )
        if pts:
            ax.errorbar(
                [100 * b for b, _ in pts],
                [s["mean"] for _, s in pts],
                yerr=[s["std"] for _, s in pts],
                marker=marker,
                capsize=3,
                label=f"GAINext, {annotation} (paper L_e)",
            )
    for r in rows:
        if r["annotation"] == "none":
            style = ":" if r["unbiased"] else "--"
            ax.axhline(
                r[column]["mean"],
                linestyle=style,
                color="gray" if r["method"] == "baseline" else "black",
                label=r["key"] if r["unbiased"] else f"{r['method']} (no annotation)",
            )
        elif r["guidance"] != "paper" or r.get("preset"):
            ax.errorbar(
                [100 * r["budget"]],
                [r[column]["mean"]],
                yerr=[r[column]["std"]],
                marker="^",
                capsize=3,
                linestyle="none",
                label=f"recipe {r['preset']}, {r['annotation']}"
                if r.get("preset")
                else f"GAINext, {r['annotation']}, {r['guidance']}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("training images with annotation (%)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def column_title(key: str) -> str:
    """``"gainext-masks-0.05-signed"`` -> ``"GAINext masks 5%\nsigned"``; other keys unchanged."""
    parts = key.split("-")
    if parts[0] != "gainext" or len(parts) < 3:
        return key
    title = f"GAINext {parts[1]} {float(parts[2]):.0%}"
    return title + (f"\n{parts[3]}" if len(parts) > 3 else "")


def titled(checkpoints: dict[str, Path]) -> dict[str, Path]:
    """The same checkpoints keyed by their :func:`column_title` (the columns of an attention figure)."""
    return {column_title(key): path for key, path in checkpoints.items()}
