"""Run one configuration (train + evaluate) and a resumable matrix of them.

Each run writes ``RUNS/<name>/result.json`` atomically when it is finished; a
run whose ``result.json`` exists is skipped, and an interrupted run resumes
from its last epoch checkpoint (``TrainConfig.resume``), so re-running an
experiment command continues where it stopped. A run folder or generated data
folder is reused only when it was made with the settings asked now; otherwise
the command stops, naming every setting that differs.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from gainx.data import load_split_for_model
from gainx.data.manifest import MANIFEST, META
from gainx.evaluation import evaluate
from gainx.experiments.specs import Benchmark, Profile, RunSpec
from gainx.experiments.variants import write_variant
from gainx.io import atomic_write_text
from gainx.models import load_model
from gainx.training import TrainConfig
from gainx.training.config import differing_settings, resume_checked_fields
from gainx.training.metrics_log import read_metrics
from gainx.training.presets import EXPERIMENT_TRAINING, preset
from gainx.training.run_folder import CHECKPOINT
from gainx.training.trainer import train

RESULT = "result.json"
# The fields of a run folder's config that must equal the config asked for it to be reused or resumed: those a
# resumed `gainx train` run keeps, and its length (a finished run of other length is not the run asked). Where the
# data and the run folder lie is derived from --out: the data is compared by what identifies it instead
# (generated: its dataset.json, base_data; on disk: the resolved folder, _check_same_settings).
SAME_RUN_FIELDS = ("epochs", *resume_checked_fields())


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
    """The fully annotated benchmark of ``seed`` (written once, reused afterwards while its ``dataset.json`` records
    the profile's sizes and ``seed``; otherwise a ValueError names every setting that differs);
    ``unbiased``: its variant without the bias (``Benchmark.unbiased``). A data set on disk
    (``Benchmark.root``) is the same for every seed (its oracle trains on ``Benchmark.oracle_split``)."""
    if unbiased and not bench.has_oracle:
        raise ValueError(f"benchmark {bench.name!r} has no unbiased variant")
    if bench.root is not None:
        return bench.root
    out = data_dir(root, bench.name, seed, unbiased)
    asked = {
        "image_size": profile.image_size,
        "seed": seed,
        "mask_fraction": 1.0,
        "train_size": profile.train_size,
        "test_size": profile.test_size,
        **(bench.unbiased if unbiased else {}),
    }
    if (out / MANIFEST).exists():
        _check_same_data(out, asked)
    else:
        bench.write(out, **asked)
    return out


def _check_same_data(out: Path, asked: dict[str, Any]) -> None:
    """A generated data folder whose ``dataset.json`` records other generator arguments than ``asked`` (top-level
    ``image_size`` and ``seed``, the others under ``generator``) is not reused: that is an error naming the folder
    and, for each argument that differs, both values."""
    meta = json.loads((out / META).read_text(encoding="utf-8"))
    there = {**meta.get("generator", {}), "image_size": meta.get("image_size"), "seed": meta.get("seed")}
    differ = [
        f"{name} {there.get(name)!r} there, {value!r} asked"
        for name, value in asked.items()
        if there.get(name) != value
    ]
    if differ:
        raise ValueError(
            f"{out} holds data generated with other settings ({'; '.join(differ)}): give the experiment another "
            "--out, whose runs train on data of these settings"
        )


def train_config(spec: RunSpec, data: Path, out: Path, profile: Profile, bench: Benchmark | None = None) -> TrainConfig:
    """The training configuration of an experiment run: :data:`~gainx.training.presets.EXPERIMENT_TRAINING`,
    over it the run's preset (a recipe), over that the profile's overrides; then the run's own fields (method,
    guidance, seed, epochs) and the profile's network, starting weights and layer, on ``bench``'s training split (the
    oracle split for the oracle of a data set on disk, recorded by its resolved path, with the guides
    ``bench.guide``)."""
    settings = {**EXPERIMENT_TRAINING, **(preset(spec.preset) if spec.preset else {}), **profile.training_overrides()}
    on_disk = bench is not None and bench.root is not None
    run = {
        "data": str(Path(data).resolve() if on_disk else data),
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
        "guide": bench.guide if bench is not None else None,
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
    stored result (read back if the run had finished before; a test split it
    was not scored on is scored then and added to it). A run folder trained
    with other settings is refused (:func:`_check_same_settings`). The result
    is written as strict JSON (:func:`finite`).
    """
    _check_same_settings(out, train_config(spec, base, out, profile, bench), bench)
    done = out / RESULT
    if done.exists():
        result = _read_result(done, bench.splits)
        missing = [split for split in bench.splits if split not in result]
        if missing:
            result.update(_scores(out / CHECKPOINT, base, missing))
            atomic_write_text(done, json.dumps(finite(result), indent=2))
        return result
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
    result.update(_scores(checkpoint, base, bench.splits))
    if extra is not None:
        result.update(extra(checkpoint, base))
    atomic_write_text(done, json.dumps(finite(result), indent=2))
    return result


def _scores(checkpoint: Path, base: Path, splits: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``split -> {metric: value, localization...}`` of the model at ``checkpoint`` on each of ``splits``."""
    model, meta = load_model(checkpoint)
    scores = {}
    for split in splits:
        report = evaluate(model, load_split_for_model(base, split, meta), meta["target_layer"])
        scores[split] = {report["metric"]: report[report["metric"]], **report["localization"]}
    return scores


def finite(value: Any) -> Any:
    """``value`` with every NaN float replaced by None (``null``: JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def _read_result(path: Path, splits: tuple[str, ...]) -> dict[str, Any]:
    """A run's stored result, each metric of ``splits`` stored as ``null`` (undefined) read back as NaN, as
    :func:`run_one` returns it after training."""
    result = json.loads(path.read_text(encoding="utf-8"))
    for split in splits:
        if split in result:
            result[split] = {k: math.nan if v is None else v for k, v in result[split].items()}
    return result


def _check_same_settings(out: Path, cfg: TrainConfig, bench: Benchmark) -> None:
    """A run folder that was trained (finished or not) with another value of a field of :data:`SAME_RUN_FIELDS`
    than ``cfg`` (the run asked), or, for a data set on disk, on another folder, is neither reused nor resumed:
    that is an error naming the folder and, for each field that differs, both values."""
    saved = out / "config.json"
    if not saved.exists():
        return
    before = TrainConfig.from_dict(json.loads(saved.read_text(encoding="utf-8")))
    names: tuple[str, ...] = SAME_RUN_FIELDS
    if bench.root is not None:  # recorded resolved since; an older run's relative path is read from here
        before, names = replace(before, data=str(Path(before.data).resolve())), (*names, "data")
    differ = differing_settings(before, cfg, names)
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
