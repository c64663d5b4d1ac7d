"""``gainx experiment localization``: does self-guidance widen the attention? (paper sec. 4)

On the shapes-on-clutter benchmark (image-level labels for training, masks
for evaluation only), over seeds: Grad-CAM of the plain classifier
(baseline), GAIN (eq. 6) and GAINext (eq. 8) with masks on a budget of the
training images (the paper's L_e, or other guidance losses). Reports mAP,
the cue mIoU of the paper's rule (pixels >= 20% of the map's maximum, per
ground-truth class map), the pointing game, the mIoU (background + classes)
of the cue label maps that ``gainx cues`` writes, the fraction of
ground-truth maps that are zero everywhere (no positive evidence for the
class; cached as ``blank.json`` in the run folder) and, in a second table,
whether each model reads the object or the erasure (the attention-mining test
of :mod:`gainx.experiments.erasure`; cached as ``erasure.json``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gainx.experiments.cues import evaluate_cues, write_cues
from gainx.experiments.erasure import FIELDS as ERASURE_FIELDS
from gainx.experiments.erasure import erasure_scores
from gainx.experiments.evidence import blank_map_fraction
from gainx.experiments.figures import titled
from gainx.experiments.runner import data_dir, finished_checkpoints, finite, run_dir, run_matrix
from gainx.experiments.specs import BENCHMARKS, FULL, QUICK, Profile, localization_matrix
from gainx.experiments.tables import aggregate, markdown
from gainx.explain import attention_figure
from gainx.io import atomic_write_text

SPLIT = "test"
BLANK = "blank.json"
ERASURE = "erasure.json"
ERASURE_HEADERS = {
    "image": "p(class): image",
    "own": "erased by its attention (eq. 3-4, the run's fill)",
    "moved": "erased by that mask moved off the objects",
    "object": "objects erased (their masks)",
    "object_margin": "objects and outlines erased (masks grown by 1/16)",
    "object_context": "objects erased, filled from their context",
    "area_own": "area erased by its attention",
    "area_moved": "area erased, moved",
}


def cue_scores(checkpoint: Path, base: Path) -> dict[str, Any]:
    """Write the run's cue label maps next to its checkpoint and score them against the masks."""
    cues = write_cues(checkpoint, base, SPLIT, checkpoint.parent / "cues")
    scores = evaluate_cues(cues, base, SPLIT)
    return {
        "cues": {"miou": scores["miou"], "miou_fg": scores["miou_fg"], "conflict_fraction": scores["conflict_fraction"]}
    }


def run_localization(
    out: str | Path,
    seeds: list[int] = (0, 1, 2),
    budgets: list[float] = (0.05,),
    quick: bool = False,
    profile: Profile | None = None,
    threads: int = 1,
    jobs: int = 1,
    guidances: list[str] = ("paper",),
    references: tuple[str, ...] = ("baseline", "gain"),
    recipes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run the localization comparison (GAINext with each of ``guidances``, and the ``recipes``); returns what
    ``results.json`` holds (there ``null`` for a metric that is undefined, NaN here)."""
    bench = BENCHMARKS["shapes"]
    profile = profile or (QUICK if quick else FULL)
    out = Path(out)
    results = run_matrix(
        localization_matrix(list(seeds), list(budgets), list(guidances), tuple(references), tuple(recipes)),
        bench,
        out,
        profile,
        threads,
        extra=cue_scores,
        jobs=jobs,
    )
    for r in results:
        run, data = run_dir(out, "shapes", r["key"], r["seed"]), data_dir(out, "shapes", r["seed"])
        r["blank_maps"] = _cached(run / BLANK, _blank, run / "last.pt", data)["blank_maps"]
        r["erasure"] = _cached(run / ERASURE, erasure_scores, run / "last.pt", data, SPLIT, fields=ERASURE_FIELDS)
    metrics = {
        "blank_maps": ("", "blank_maps"),
        "mAP": (SPLIT, "mAP"),
        "miou": (SPLIT, "miou"),
        "pointing_game": (SPLIT, "pointing_game"),
        "cue_map_miou": ("cues", "miou"),
    }
    rows = aggregate(results, metrics)
    headers = {
        "blank_maps": "blank GT maps",
        "mAP": "mAP",
        "miou": "cue mIoU (per GT map)",
        "pointing_game": "pointing game",
        "cue_map_miou": "cue label-map mIoU (bg + classes)",
    }
    table = markdown(rows, headers)
    erasure_rows = aggregate(results, {k: ("erasure", k) for k in ERASURE_FIELDS})
    erasure_table = markdown(erasure_rows, ERASURE_HEADERS)
    report = {
        "benchmark": "shapes",
        "description": bench.description,
        "profile": profile.__dict__,
        "seeds": list(seeds),
        "budgets": list(budgets),
        "table": rows,
        "erasure_table": erasure_rows,
        "runs": results,
    }
    atomic_write_text(out / "results.json", json.dumps(finite(report), indent=2))
    head = f"{bench.description}; {profile.model}; mean ± std over seeds {list(seeds)}"
    erasure_head = (
        "Read the object or the erasure? The probability of each ground-truth class on the test images with masks, "
        "as they are and erased five ways (gainx.experiments.erasure):"
    )
    atomic_write_text(out / "results.md", f"{head}\n\n{table}\n\n{erasure_head}\n\n{erasure_table}\n")
    seed = seeds[0]
    attention_figure(
        titled(finished_checkpoints(out, "shapes", [r["key"] for r in rows], seed)),
        data_dir(out, "shapes", seed),
        SPLIT,
        out / "shapes_attention.png",
        explain="ground_truth",
    )
    print(table)
    return report


def _blank(checkpoint: Path, data: Path) -> dict[str, float]:
    return {"blank_maps": blank_map_fraction(checkpoint, data, SPLIT)}


def _cached(
    path: Path, compute: Callable[..., dict[str, Any]], *args: Any, fields: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``compute(*args)``, written to ``path`` (next to the run's checkpoint) the first time, read afterwards;
    computed again when what ``path`` holds lacks one of ``fields`` (written by an earlier version)."""
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if all(f in cached for f in fields):
            return cached
    atomic_write_text(path, json.dumps(compute(*args)))
    return json.loads(path.read_text(encoding="utf-8"))
