"""``gainx experiment bias``: does GAINext remove a data-set bias? (paper sec. 5, Table 4)

On a bias benchmark (decoy digits or the co-occurring background), over seeds:
baseline (L_cl, plain Grad-CAM), GAIN (eq. 6), GAINext (eq. 8) with masks
and with boxes on a fraction (the budget) of the training images, GAINext
with each non-paper guidance loss (:mod:`gainx.losses.guidance`) and each
recipe (a preset of :mod:`gainx.training.presets`) at one budget.
:func:`run_bias_data` runs the same comparison on a data set on disk, with its
own annotations and its bias-consistent and bias-conflicting splits named.
Writes ``results.json`` (every run and the aggregate; ``null`` for a metric
that is undefined), ``results.md`` (mean ± std: accuracy, or mAP on a
multi-label data set, on the bias-conflicting and bias-consistent test sets
(table columns ``acc_*`` or ``map_*``), cue mIoU and pointing game on
the bias-conflicting set; where the logits come from,
:mod:`gainx.experiments.evidence`) and figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gainx.data import load_dataset
from gainx.experiments.evidence import evidence_split
from gainx.experiments.figures import budget_figure, titled
from gainx.experiments.runner import base_data, finished_checkpoints, finite, run_dir, run_matrix
from gainx.experiments.specs import (
    BENCHMARKS,
    BIAS_BENCHMARKS,
    FULL,
    QUICK,
    RECIPES,
    REFERENCES,
    Benchmark,
    Profile,
    RunSpec,
    bias_matrix,
    data_matrix,
)
from gainx.experiments.tables import aggregate, markdown
from gainx.experiments.user_data import annotated_fraction, data_benchmark, has_guides
from gainx.explain import attention_figure
from gainx.io import atomic_write_text
from gainx.losses.guidance import GUIDANCES

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
    recipes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run the bias comparison on ``benchmark``; returns what ``results.json`` holds."""
    if benchmark not in BIAS_BENCHMARKS:
        raise ValueError(f"bias benchmark must be one of {BIAS_BENCHMARKS}, got {benchmark!r}")
    bench = BENCHMARKS[benchmark]
    profile = profile or (QUICK if quick else FULL)
    out = Path(out)
    specs = bias_matrix(
        list(seeds), list(budgets), guidance_budget, list(guidances), bench.has_oracle, tuple(references), recipes
    )
    report = _compare(
        bench, specs, out, profile, threads, jobs, {"profile": profile.__dict__, "budgets": list(budgets)}
    )
    rows = report["table"]
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
    figure_keys = ["baseline", "gain", f"gainext-masks-{guidance_budget:g}"]
    figure_keys += [r["key"] for r in rows if r["annotation"] != "none" and (r["guidance"] != "paper" or r["preset"])]
    _attention_figure(bench, out, profile, figure_keys, seeds[0])
    return report


def run_bias_data(
    data: str | Path,
    out: str | Path,
    consistent_split: str,
    conflicting_split: str,
    train_split: str = "train",
    oracle_split: str | None = None,
    image_size: int | None = None,
    seeds: list[int] = (0, 1, 2),
    guidances: list[str] = ("paper",),
    profile: Profile | None = None,
    threads: int = 1,
    jobs: int = 1,
    references: tuple[str, ...] = REFERENCES,
    recipes: tuple[str, ...] = RECIPES,
) -> dict[str, Any]:
    """The bias comparison on the data set at ``data`` (any layout of :func:`gainx.data.load_dataset`), trained
    on ``train_split`` with the masks or boxes it has: baseline, GAIN, GAINext with each of ``guidances``, the
    ``recipes``, and the oracle (the baseline trained on ``oracle_split``, a training split drawn without
    the bias) when there is one. Writes ``results.json`` and ``results.md`` as :func:`run_bias` does."""
    bench = data_benchmark(data, consistent_split, conflicting_split, train_split, oracle_split, image_size)
    profile = profile or FULL
    annotated = annotated_fraction(bench)
    if annotated == 0 and (guidances or recipes):
        raise ValueError(
            f"{bench.root}: no image of the training split {train_split!r} has a mask or boxes; GAINext and the "
            "recipes learn from annotated images: annotate a few, or compare the references alone "
            "(no guidances, no recipes)"
        )
    notes = [
        f"{annotated:.1%} of the training images ({train_split!r}) carry a mask or boxes; every run trains "
        f"{profile.epochs} epoch{'' if profile.epochs == 1 else 's'}."
    ]
    if "oracle" in references:
        notes.append(
            f"the oracle is the baseline trained on {oracle_split!r}: a method far below it on the bias-conflicting "
            "split may be under-trained rather than biased (compare at more --epochs)."
            if bench.has_oracle
            else "oracle skipped: no training split drawn without the bias was named (--oracle-split); without "
            "it the table cannot say whether a method is compared under-trained."
        )
    localized = has_guides(bench, conflicting_split)
    evidence = localized and _has_single_label_guides(bench, conflicting_split)
    if not localized:
        notes.append(
            f"cue mIoU, pointing game and evidence not measured: the split {conflicting_split!r} has no masks or boxes."
        )
    elif not evidence:
        notes.append(
            f"signed evidence not measured: no single-label image of the split {conflicting_split!r} has a mask or "
            "boxes (the evidence splits the logit of an image's one class)."
        )
    for note in notes:
        print(f"gainx experiment bias: {note}")
    specs = data_matrix(list(seeds), annotated, list(guidances), bench.has_oracle, tuple(references), recipes)
    report = _compare(
        bench,
        specs,
        Path(out),
        profile,
        threads,
        jobs,
        {
            "data": str(bench.root),
            "model": profile.model,
            "epochs": profile.epochs,
            "training": profile.training_overrides(),
        },
        notes,
        evidence=evidence,
    )
    _attention_figure(bench, Path(out), profile, [r["key"] for r in report["table"] if not r["unbiased"]], seeds[0])
    return report


def _compare(
    bench: Benchmark,
    specs: list[RunSpec],
    out: Path,
    profile: Profile,
    threads: int,
    jobs: int,
    about: dict[str, Any],
    notes: list[str] = (),
    evidence: bool = True,
) -> dict[str, Any]:
    """Train and evaluate ``specs`` on ``bench``; write ``results.json`` and ``results.md``
    (``about`` and ``notes`` describe the comparison); returns the report."""
    results = run_matrix(specs, bench, out, profile, threads, jobs=jobs)
    consistent = next(s for s in bench.splits if s != bench.main_split)
    # a multi-label data set is scored by mAP, a single-label one by accuracy (gainx.evaluation.evaluate)
    score, short, label = (
        ("mAP", "map", "mAP") if any("mAP" in r[bench.main_split] for r in results) else ("accuracy", "acc", "acc.")
    )
    metrics = {
        f"{short}_conflicting": (bench.main_split, score),
        f"{short}_consistent": (consistent, score),
        "miou": (bench.main_split, "miou"),
        "pointing_game": (bench.main_split, "pointing_game"),
    }
    seeds = sorted({s.seed for s in specs})
    report = {
        "benchmark": bench.name,
        "description": bench.description,
        **about,
        "splits": {"conflicting": bench.main_split, "consistent": consistent},
        "seeds": seeds,
        "notes": list(notes),
        "table": aggregate(results, metrics),
        "runs": results,
    }
    headers = {
        f"{short}_conflicting": f"{label} bias-conflicting ({bench.main_split})",
        f"{short}_consistent": f"{label} bias-consistent ({consistent})",
        "miou": "cue mIoU (conflicting)",
        "pointing_game": "pointing game (conflicting)",
    }
    table = markdown(report["table"], headers)
    text = f"{bench.description}; {profile.model}; mean ± std over seeds {seeds}\n\n{table}\n"
    text += "".join(f"\n* {note}" for note in notes) + ("\n" if notes else "")
    if evidence:
        for r in results:
            r["evidence"] = _evidence(r, bench, out, profile)
        report["evidence_table"] = aggregate(results, {k: ("evidence", k) for k in EVIDENCE_HEADERS})
        text += (
            f"\nSigned evidence (contribution to the logit) on {bench.main_split}, from the object mask and "
            f"from the rest of the image:\n\n{markdown(report['evidence_table'], EVIDENCE_HEADERS)}\n"
        )
    atomic_write_text(out / "results.json", json.dumps(finite(report), indent=2))
    atomic_write_text(out / "results.md", text)
    print(table)
    return report


def _has_single_label_guides(bench: Benchmark, split: str) -> bool:
    """Whether any single-label image of ``split`` carries a mask or boxes (the images :func:`evidence_split`
    reads)."""
    dataset = load_dataset(bench.root, split, image_size=bench.image_size)
    return any(s.has_guide and len(s.labels) == 1 for s in dataset.samples)


def _attention_figure(bench: Benchmark, out: Path, profile: Profile, keys: list[str], seed: int) -> None:
    """The attention of the finished runs among ``keys`` at ``seed`` on the bias-conflicting split."""
    attention_figure(
        titled(finished_checkpoints(out, bench.name, keys, seed)),
        base_data(bench, out, seed, profile),
        bench.main_split,
        out / f"{bench.name}_attention.png",
    )


def _evidence(result: dict[str, Any], bench: Benchmark, out: Path, profile: Profile) -> dict[str, Any]:
    """The run's :func:`evidence_split` on the bias-conflicting split (cached in its run folder)."""
    path = run_dir(out, bench.name, result["key"], result["seed"]) / EVIDENCE
    if not path.exists():
        data = base_data(bench, out, result["seed"], profile, bool(result.get("unbiased", False)))
        atomic_write_text(path, json.dumps(evidence_split(path.parent / "last.pt", data, bench.main_split), indent=2))
    return json.loads(path.read_text(encoding="utf-8"))
