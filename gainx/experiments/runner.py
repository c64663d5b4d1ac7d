"""Run one configuration (train + evaluate) and a resumable matrix of them.

Each run writes ``RUNS/<name>/result.json`` atomically when it is finished; a
run whose ``result.json`` exists is skipped, and an interrupted run resumes
from its last epoch checkpoint (``TrainConfig.resume``), so re-running an
experiment command continues where it stopped.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from gainx.data import load_split_for_model
from gainx.evaluation import evaluate
from gainx.experiments.specs import Benchmark, Profile, RunSpec
from gainx.experiments.variants import write_variant
from gainx.io import atomic_write_text
from gainx.models import load_model
from gainx.training import TrainConfig
from gainx.training.metrics_log import read_metrics
from gainx.training.presets import EXPERIMENT_TRAINING, preset
from gainx.training.trainer import train

RESULT = "result.json"


def data_dir(root: Path, bench_name: str, seed: int, unbiased: bool = False) -> Path:
    """``root/data/<bench>-seed<seed>[-unbiased]``: where :func:`base_data` writes a benchmark."""
    return root / "data" / (f"{bench_name}-seed{seed}" + ("-unbiased" if unbiased else ""))


def run_dir(root: Path, bench_name: str, key: str, seed: int) -> Path:
    """``root/runs/<bench>/<key>-seed<seed>`` (:attr:`RunSpec.name`): one run's checkpoints and results."""
    return root / "runs" / bench_name / f"{key}-seed{seed}"


def finished_checkpoints(root: Path, bench_name: str, keys: list[str], seed: int) -> dict[str, Path]:
    """``key -> last.pt`` of the runs among ``keys`` at ``seed`` that have finished (hold their result)."""
    runs = {key: run_dir(root, bench_name, key, seed) for key in keys}
    return {key: run / "last.pt" for key, run in runs.items() if (run / RESULT).exists()}


def base_data(bench: Benchmark, root: Path, seed: int, profile: Profile, unbiased: bool = False) -> Path:
    """The fully annotated benchmark of ``seed`` (written once, reused afterwards);
    ``unbiased``: its variant without the bias (``Benchmark.unbiased``). A data set on disk
    (``Benchmark.root``) is the same for every seed (its oracle trains on ``Benchmark.oracle_split``)."""
    if unbiased and not bench.has_oracle:
        raise ValueError(f"benchmark {bench.name!r} has no unbiased variant")
    if bench.root is not None:
        return bench.root
    out = data_dir(root, bench.name, seed, unbiased)
    if not (out / "manifest.csv").exists():
        bench.write(
            out,
            image_size=profile.image_size,
            seed=seed,
            mask_fraction=1.0,
            train_size=profile.train_size,
            test_size=profile.test_size,
            **(bench.unbiased if unbiased else {}),
        )
    return out


def train_config(spec: RunSpec, data: Path, out: Path, profile: Profile, bench: Benchmark | None = None) -> TrainConfig:
    """The training configuration of an experiment run: :data:`~gainx.training.presets.EXPERIMENT_TRAINING`,
    over it the run's preset (a recipe), over that the profile's overrides; then the run's own fields (method,
    guidance, seed, epochs) and the profile's network, starting weights and layer, on ``bench``'s training split (the
    oracle split for the oracle of a data set on disk)."""
    settings = {**EXPERIMENT_TRAINING, **(preset(spec.preset) if spec.preset else {}), **profile.training_overrides()}
    on_disk = bench is not None and bench.root is not None
    run = {
        "data": str(data),
        "out": str(out),
        "arch": profile.arch,
        "weights": profile.weights,
        "target_layer": profile.target_layer,
        "method": spec.method,
        "guidance": spec.guidance,
        "epochs": profile.epochs,
        "seed": spec.seed,
        "am_warmup": min(settings["am_warmup"], profile.epochs - 1),
        "image_size": bench.image_size if on_disk else None,
        "train_split": bench.oracle_split if on_disk and spec.unbiased else (bench.train_split if bench else "train"),
        "resume": True,
        "val_split": "none",  # each run is evaluated on its benchmark's test splits afterwards
        "progress": False,
        "device": "cpu",
        "allow_outside_root": not on_disk,  # budget variants list the base data set's images (../../train/...)
    }
    return TrainConfig(**{**settings, **run})


def run_one(
    spec: RunSpec,
    bench: Benchmark,
    base: Path,
    out: Path,
    profile: Profile,
    extra: Callable[[Path, Path], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train ``spec`` on its annotation variant of ``base`` and evaluate every test split.

    ``extra(checkpoint, base)`` may add metrics (e.g. cue scores). Returns the
    stored result (read back if the run had finished before).
    """
    _check_same_settings(out, train_config(spec, base, out, profile, bench), profile)
    done = out / RESULT
    if done.exists():
        return json.loads(done.read_text(encoding="utf-8"))
    data = base if bench.root is not None else write_variant(base, spec.annotation, spec.budget, seed=spec.seed)
    checkpoint = train(train_config(spec, data, out, profile, bench))
    epochs = read_metrics(out / "metrics.csv")
    result: dict[str, Any] = {
        **spec.to_dict(),
        "benchmark": bench.name,
        "train_seconds": round(sum(row["seconds"] for row in epochs), 1),  # every epoch's, resumed or not
    }
    last_epoch = (epochs or [{}])[-1]
    if "counterfactual_weight" in last_epoch:  # the counterfactual images' weight in L_cl at the end (group DRO)
        result["counterfactual_weight"] = round(last_epoch["counterfactual_weight"], 3)
    model, meta = load_model(checkpoint)
    for split in bench.splits:
        report = evaluate(model, load_split_for_model(base, split, meta), meta["target_layer"])
        metric = report["metric"]
        result[split] = {metric: report[metric], **report["localization"]}
    if extra is not None:
        result.update(extra(checkpoint, base))
    atomic_write_text(done, json.dumps(result, indent=2))
    return result


def _check_same_settings(out: Path, cfg: TrainConfig, profile: Profile) -> None:
    """A run folder that was trained (finished or not) with other values of the training settings this experiment
    sets (``--alpha``, ``--am-gradient``, ...) is neither reused nor resumed: that is an error naming the folder."""
    saved = out / "config.json"
    if not saved.exists():
        return
    before = TrainConfig.from_dict(json.loads(saved.read_text(encoding="utf-8")))
    differ = [
        f"{name} {getattr(before, name)!r} there, {getattr(cfg, name)!r} asked"
        for name in profile.training_overrides()
        if getattr(before, name) != getattr(cfg, name)
    ]
    if differ:
        raise ValueError(
            f"{out} holds a run trained with other settings ({'; '.join(differ)}): give the experiment another "
            "--out, or remove that run folder"
        )


def _run_logged(
    spec: RunSpec,
    bench: Benchmark,
    root: Path,
    profile: Profile,
    threads: int,
    extra: Callable[[Path, Path], dict[str, Any]] | None,
) -> dict[str, Any]:
    """One run of :func:`run_matrix` with ``threads`` intra-op threads (in this process or a worker)."""
    torch.set_num_threads(threads)
    base = base_data(bench, root, spec.seed, profile, spec.unbiased)
    return run_one(spec, bench, base, run_dir(root, bench.name, spec.key, spec.seed), profile, extra)


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` spawned worker processes (no thread pool inherited), each ending itself once the process that
    started it is gone: a killed experiment command leaves no worker training the runs still queued for it, into
    folders that the next command may be training."""
    return ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_end_with_parent, initargs=(os.getpid(),)
    )


def _end_with_parent(parent: int) -> None:
    """Worker initializer: a daemon thread that ends the worker when its parent process changes (the parent died
    and the worker was handed to another). A run cut short resumes from its last epoch checkpoint."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="gainx-parent-watch", daemon=True).start()


def run_matrix(
    specs: list[RunSpec],
    bench: Benchmark,
    root: Path,
    profile: Profile,
    threads: int = 1,
    extra: Callable[[Path, Path], dict[str, Any]] | None = None,
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Run every spec (skipping finished ones) with ``threads`` intra-op threads each, ``jobs`` at a time.

    The data sets are written first, in this process; with ``jobs > 1`` the runs
    go to that many worker processes (spawned, so no thread pool is inherited).
    A run's result does not depend on ``jobs``: each run seeds itself. Results
    come back in the order of ``specs``; a failed run raises after the others
    that had started have finished (the others are cancelled; finished
    runs keep their results, so the command resumes).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    for spec in specs:
        base_data(bench, root, spec.seed, profile, spec.unbiased)
    results: list[dict[str, Any] | None] = [None] * len(specs)
    t0 = time.perf_counter()

    def report(i: int, result: dict[str, Any]) -> None:
        results[i] = result
        main = result[bench.main_split]
        score = main.get("accuracy", main.get("mAP"))
        done = sum(r is not None for r in results)
        print(
            f"[{done}/{len(specs)}] {bench.name} {specs[i].name}: {bench.main_split} {score:.3f} "
            f"cue mIoU {main['miou']:.3f} (train {result['train_seconds']:.0f}s, "
            f"{time.perf_counter() - t0:.0f}s elapsed)",
            flush=True,
        )

    if jobs == 1:
        for i, spec in enumerate(specs):
            report(i, _run_logged(spec, bench, root, profile, threads, extra))
        return results
    pool = worker_pool(jobs)
    try:
        futures = {pool.submit(_run_logged, s, bench, root, profile, threads, extra): i for i, s in enumerate(specs)}
        for future in as_completed(futures):
            report(futures[future], future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results
