"""``gainx experiment bias``: does GAINext remove a data-set bias? (paper sec. 5, Table 4)

On a bias benchmark (decoy digits or the co-occurring background), over seeds:
baseline (L_cl, plain Grad-CAM), GAIN (eq. 6), GAINext (eq. 8) with masks
and with boxes on a fraction (the budget) of the training images, and GAINext
with each non-paper guidance loss (:mod:`gainx.losses.guidance`) at one
budget. Writes ``results.json`` (every run and the aggregate), ``results.md``
(mean ± std: accuracy on the bias-conflicting and bias-consistent test sets,
cue mIoU and pointing game on the bias-conflicting set; and where the logits
come from, :mod:`gainx.experiments.evidence`) and figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gainx.experiments.evidence import evidence_split
from gainx.experiments.figures import budget_figure, titled
from gainx.experiments.runner import base_data, data_dir, finished_checkpoints, run_dir, run_matrix
from gainx.experiments.specs import BENCHMARKS, FULL, QUICK, REFERENCES, Benchmark, Profile, bias_matrix
from gainx.experiments.tables import aggregate, markdown
from gainx.explain import attention_figure
from gainx.io import atomic_write_text
from gainx.losses.guidance import GUIDANCES

BIAS_BENCHMARKS = ("decoy", "cooccur")
EVIDENCE = "evidence.json"
EVIDENCE_HEADERS = {
    "gt_object": "GT logit from object",
    "gt_background": "GT logit from background",
    "other_object": "top other logit from object",
    "other_background": "top other logit from background",
    "background_favours_other": "images where background favours the other class",
}


def run_bias(
    benchmark: str,
    out: str | Path,
    seeds: list[int] = (0, 1, 2),
    budgets: list[float] = (0.01, 0.02, 0.05, 0.10),
    guidance_budget: float = 0.05,
    guidances: list[str] = GUIDANCES,
    quick: bool = False,
    profile: Profile | None = None,
    threads: int = 1,
    jobs: int = 1,
    references: tuple[str, ...] = REFERENCES,
) -> dict[str, Any]:
    """Run the bias comparison on ``benchmark``; returns what ``results.json`` holds."""
    if benchmark not in BIAS_BENCHMARKS:
        raise ValueError(f"bias benchmark must be one of {BIAS_BENCHMARKS}, got {benchmark!r}")
    bench = BENCHMARKS[benchmark]
    profile = profile or (QUICK if quick else FULL)
    out = Path(out)
    oracle = bench.unbiased is not None
    specs = bias_matrix(list(seeds), list(budgets), guidance_budget, list(guidances), oracle, tuple(references))
    results = run_matrix(specs, bench, out, profile, threads, jobs=jobs)
    consistent = next(s for s in bench.splits if s != bench.main_split)
    metrics = {
        "acc_conflicting": (bench.main_split, "accuracy"),
        "acc_consistent": (consistent, "accuracy"),
        "miou": (bench.main_split, "miou"),
        "pointing_game": (bench.main_split, "pointing_game"),
    }
    rows = aggregate(results, metrics)
    report = {
        "benchmark": benchmark,
        "description": bench.description,
        "profile": profile.__dict__,
        "splits": {"conflicting": bench.main_split, "consistent": consistent},
        "seeds": list(seeds),
        "budgets": list(budgets),
        "table": rows,
        "runs": results,
    }
    headers = {
        "acc_conflicting": f"acc. bias-conflicting ({bench.main_split})",
        "acc_consistent": f"acc. bias-consistent ({consistent})",
        "miou": "cue mIoU (conflicting)",
        "pointing_game": "pointing game (conflicting)",
    }
    table = markdown(rows, headers)
    for r in results:
        r["evidence"] = _evidence(r, bench, out, profile)
    report["evidence_table"] = aggregate(results, {k: ("evidence", k) for k in EVIDENCE_HEADERS})
    evidence_table = markdown(report["evidence_table"], EVIDENCE_HEADERS)
    atomic_write_text(out / "results.json", json.dumps(report, indent=2))
    atomic_write_text(
        out / "results.md",
        f"{bench.description}; mean ± std over seeds {list(seeds)}\n\n{table}\n\n"
        f"Signed evidence (contribution to the logit) on {bench.main_split}, from the object mask and "
        f"from the rest of the image:\n\n{evidence_table}\n",
    )
    budget_figure(
        rows,
        "acc_conflicting",
        f"accuracy on {bench.main_split}",
        f"{benchmark}: bias-conflicting accuracy",
        out / f"{benchmark}_accuracy.png",
    )
    budget_figure(
        rows, "miou", "cue mIoU", f"{benchmark}: attention cue mIoU (bias-conflicting)", out / f"{benchmark}_miou.png"
    )
    seed = seeds[0]
    figure_keys = ["baseline", "gain", f"gainext-masks-{guidance_budget:g}"]
    figure_keys += [f"gainext-masks-{guidance_budget:g}-{g}" for g in guidances if g != "paper"]
    attention_figure(
        titled(finished_checkpoints(out, benchmark, figure_keys, seed)),
        data_dir(out, benchmark, seed),
        bench.main_split,
        out / f"{benchmark}_attention.png",
    )
    print(table)
    return report


def _evidence(result: dict[str, Any], bench: Benchmark, out: Path, profile: Profile) -> dict[str, Any]:
    """The run's :func:`evidence_split` on the bias-conflicting split (cached in its run folder)."""
    path = run_dir(out, bench.name, result["key"], result["seed"]) / EVIDENCE
    if not path.exists():
        data = base_data(bench, out, result["seed"], profile, bool(result.get("unbiased", False)))
        atomic_write_text(path, json.dumps(evidence_split(path.parent / "last.pt", data, bench.main_split), indent=2))
    return json.loads(path.read_text(encoding="utf-8"))
