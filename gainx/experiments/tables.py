"""Aggregate per-seed results into mean +- std and render markdown tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gainx.experiments.specs import DATA


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value), ignoring NaN."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "n": int(arr.size)}


def aggregate(results: list[dict[str, Any]], metrics: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """One row per configuration ``key`` (in first-seen order), each metric as mean/std over seeds.

    ``metrics`` maps a column name to ``(split, field)`` of a run's result.
    """
    keys: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        keys.setdefault(r["key"], []).append(r)
    rows = []
    for runs in keys.values():
        first = runs[0]
        row = {k: first[k] for k in ("key", "method", "annotation", "budget", "guidance")}
        row["preset"] = first.get("preset")
        row["unbiased"] = bool(first.get("unbiased", False))
        row["seeds"] = sorted(r["seed"] for r in runs)
        row["train_seconds"] = mean_std([r["train_seconds"] for r in runs])
        for column, (split, field) in metrics.items():
            row[column] = mean_std([float(r[split][field]) if split else float(r[field]) for r in runs])
        rows.append(row)
    return rows


def fmt(stat: dict[str, float]) -> str:
    """``mean ± std``; a single seed has no spread and shows its value with ``(1 seed)``."""
    if stat["n"] == 0:
        return "n/a"
    if stat["n"] == 1:
        return f"{stat['mean']:.3f} (1 seed)"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def markdown(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    """Markdown table: configuration columns (a recipe's preset named in the method column), then ``columns``
    (field -> header) as mean ± std."""
    head = ["method", "annotation", "budget", "guidance", *columns.values(), "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        budget = f"{r['budget']:.0%}" if r["annotation"] != "none" else "-"
        method = f"{r['method']} (trained on unbiased data)" if r["unbiased"] else r["method"]
        method = f"recipe `{r['preset']}` ({method})" if r.get("preset") else method
        annotation = "the data's own" if r["annotation"] == DATA else r["annotation"]
        cells = [method, annotation, budget, r["guidance"] if r["method"] == "gainext" else "-"]
        cells += [fmt(r[c]) for c in columns]
        cells.append(f"{r['train_seconds']['mean']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
