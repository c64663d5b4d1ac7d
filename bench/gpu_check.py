"""The GPU check as one command: build the extension with CUDA, run the CUDA tests and the kernel benchmarks,
evaluate the performance targets.

    bench/gpu_check.sh [--dry-run] [--skip-build] [--skip-tests] [--skip-bench] [--attention] [--budget-s 540]
                       [--out bench/results]

Steps, each with its log under ``<out>/cuda-<gpu name>/logs/``:

1. ``build-pip``: ``pip install --no-build-isolation --no-deps -v .`` (the package builds and installs from the
   checkout), then ``build-inplace``: ``python setup.py build_ext --inplace`` (the copy of ``gainx._C`` next to the
   sources, which the tests and benchmarks import; ninja reuses the first build's objects). Both with
   ``FORCE_CUDA=1``, ``TORCH_CUDA_ARCH_LIST`` (``--arch``, default ``$TORCH_CUDA_ARCH_LIST`` or 9.0) and
   ``MAX_JOBS`` (default: every core).
2. ``tests``: ``pytest -m cuda tests`` (junit XML in ``logs/tests.xml``).
3. ``bench-<module>``: ``python -m bench.run --quick -k <module>`` for each of :data:`BENCH_MODULES`, with the
   target shapes pinned by :data:`bench.targets.BENCH_ENV`; merged into ``results.{json,md}``.
4. summary: ``gpu_check.{md,json}`` (:mod:`bench.gpu_summary`) with the targets of :mod:`bench.targets` evaluated
   on ``results.json``.

``--attention`` checks the attention-mining step alone, into ``<out>/cuda-<gpu name>/attention/``: the same build,
then ``tests`` runs the CUDA tests of the two Triton backends (``tests/test_attention_erase_{fused,triton}.py``),
``tune`` sweeps the fused backend's tiles (:mod:`bench.tune_attention_erase`, :data:`TUNE_SHARE` of the budget,
``tuning.json``), and one ``bench-attention_erase-<run>`` step per run of :data:`ATTENTION_RUNS` times eager,
``torch.compile`` of eager, the ``triton`` and the ``fused`` backends (wall and device time).

Each step may use what is left of ``--budget-s`` minus :data:`SUMMARY_RESERVE_S`; a step that runs out is stopped
and reported as timed out, and the summary is written whatever happened. Exit status 0 only when every step
succeeded (targets not met do not change it: they are measurements).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.gpu_summary import StepOutcome, collect_environment, junit_counts, write_summary
from bench.run import device_name, markdown
from bench.targets import ATTN_SHAPE, BENCH_ENV, evaluate
from gainx.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
BENCH_MODULES = ("bench_attention_erase", "bench_class_attention", "bench_gain_step", "bench_onnx_attention")
SUMMARY_RESERVE_S = 30  # kept back from the budget for the environment probe and the summary
MIN_STEP_S = 20  # a step with less time left than this is skipped
PLACEHOLDER_FOLDER = "cuda-<gpu name>"  # the results folder's name in a dry run without a GPU
ATTENTION_TESTS = ("tests/test_attention_erase_fused.py", "tests/test_attention_erase_triton.py")
# --attention benchmark runs: (B, classes, C, h, w, H, W), dtype; ResNet-50 shapes in fp32 and bf16, a small
# batch, a large map
ATTENTION_RUNS = {
    "resnet50": (ATTN_SHAPE, "float32"),
    "resnet50-bf16": (ATTN_SHAPE, "bfloat16"),
    "resnet50-fp16": (ATTN_SHAPE, "float16"),
    "batch4": ((4, *ATTN_SHAPE[1:]), "float32"),
    "map14-448": ((*ATTN_SHAPE[:3], 14, 14, 448, 448), "float32"),
}
TUNE_SHARE = 0.25  # of --budget-s, for the --attention tile sweep


@dataclass(frozen=True)
class Step:
    """One command of the check; ``results`` is where a benchmark step's ``bench.run`` writes."""

    name: str
    cmd: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    results: Path | None = None


def _budget(text: str) -> float:
    value = float(text)
    if not value > SUMMARY_RESERVE_S + MIN_STEP_S:
        raise argparse.ArgumentTypeError(
            f"--budget-s must exceed {SUMMARY_RESERVE_S + MIN_STEP_S} s (summary reserve + one step), got {text}"
        )
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/gpu_check.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="print every step and run nothing")
    parser.add_argument("--skip-build", action="store_true", help="use the gainx._C already built in place")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest -m cuda")
    parser.add_argument("--skip-bench", action="store_true", help="evaluate the targets on the existing results.json")
    parser.add_argument(
        "--attention",
        action="store_true",
        help="the attention-mining step alone: its CUDA tests, the fused tile sweep, old vs new vs eager vs compile",
    )
    parser.add_argument("--budget-s", type=_budget, default=540.0, help="wall-clock limit of the whole check (540)")
    parser.add_argument(
        "--arch",
        default=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"),
        help="TORCH_CUDA_ARCH_LIST of the build (default: $TORCH_CUDA_ARCH_LIST or 9.0, Hopper)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="results root; the check writes into <out>/cuda-<gpu name>/",
    )
    return parser.parse_args(argv)


def plan(args: argparse.Namespace, folder: Path, work: Path) -> list[Step]:
    """The commands to run, in order; ``folder`` receives the logs, ``work`` the per-module benchmark results."""
    logs, py = folder / "logs", sys.executable
    steps = []
    if not args.skip_build:
        env = {
            "FORCE_CUDA": "1",
            "TORCH_CUDA_ARCH_LIST": args.arch,
            "MAX_JOBS": os.environ.get("MAX_JOBS", str(os.cpu_count())),
        }
        steps += [
            Step(
                "build-pip",
                [py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-v", "."],
                logs / "build-pip.log",
                env,
            ),
            Step("build-inplace", [py, "setup.py", "build_ext", "--inplace"], logs / "build-inplace.log", env),
        ]
    if not args.skip_tests:
        where = list(ATTENTION_TESTS) if args.attention else ["tests"]
        options = ["-m", "cuda", *where, "-p", "no:cacheprovider", "-q", "-rfEs", "--continue-on-collection-errors"]
        pytest = [py, "-m", "pytest", *options, f"--junitxml={logs / 'tests.xml'}"]
        steps.append(Step("tests", pytest, logs / "tests.log"))
    if args.attention:
        return steps + ([] if args.skip_bench else _attention_bench(args, folder, work))
    if not args.skip_bench:
        steps += [
            Step(
                f"bench-{module.removeprefix('bench_')}",
                [py, "-m", "bench.run", "--quick", "-k", module, "--out", str(work / module)],
                logs / f"{module}.log",
                dict(BENCH_ENV),
                work / module,
            )
            for module in BENCH_MODULES
        ]
    return steps


def _attention_bench(args: argparse.Namespace, folder: Path, work: Path) -> list[Step]:
    """The --attention mode's tile sweep and its benchmark of the four members at each shape."""
    logs, py = folder / "logs", sys.executable
    tune = [py, "-m", "bench.tune_attention_erase", "--budget-s", f"{args.budget_s * TUNE_SHARE:.0f}"]
    shapes = sorted({",".join(map(str, shape)) for shape, _ in ATTENTION_RUNS.values()})
    steps = [Step("tune", [*tune, "--out", str(folder / "tuning.json"), "--shapes", *shapes], logs / "tune.log")]
    for label, (shape, dtype) in ATTENTION_RUNS.items():
        env = {"GAINX_BENCH_ATTN": ",".join(map(str, shape)), "GAINX_BENCH_DTYPE": dtype}
        out = work / f"attention_erase-{label}"
        cmd = [py, "-m", "bench.run", "--quick", "-k", "bench_attention_erase", "--out", str(out)]
        steps.append(Step(f"bench-attention_erase-{label}", cmd, logs / f"bench_attention_erase-{label}.log", env, out))
    return steps


def results_folder(args: argparse.Namespace, device_folder: str) -> Path:
    """``<out>/<device folder>``, or its ``attention/`` subfolder for --attention."""
    folder = args.out / device_folder
    return folder / "attention" if args.attention else folder


def describe(step: Step) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in step.env.items())
    return f"{env + ' ' if env else ''}{shlex.join(step.cmd)}\n      log: {step.log}"


def run_step(step: Step, timeout: float) -> StepOutcome:
    """Run ``step`` from the checkout's root with its output in its log; stop its whole process group on timeout."""
    step.log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with step.log.open("w") as log:
        log.write(f"$ {describe(step)}\n")
        log.flush()
        proc = subprocess.Popen(
            step.cmd,
            cwd=ROOT,
            env={**os.environ, **step.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return StepOutcome(step.name, f"timed out after {timeout:.0f} s", time.monotonic() - start, str(step.log))
    status = "ok" if code == 0 else f"failed (exit {code})"
    return StepOutcome(step.name, status, time.monotonic() - start, str(step.log))


def merge_results(parts: list[dict]) -> dict:
    """One pytest-benchmark JSON from several runs on the same machine: the first one's metadata, every benchmark."""
    merged = dict(parts[0])
    merged["benchmarks"] = [b for part in parts for b in part["benchmarks"]]
    return merged


def write_results(folder: Path, parts: list[dict]) -> None:
    data = merge_results(parts)
    atomic_write_text(folder / "results.json", json.dumps(data, indent=1))
    atomic_write_text(folder / "results.md", markdown(data))


def _remove_stale_outputs(folder: Path, args: argparse.Namespace) -> None:
    """Outputs of an earlier run that the steps about to run replace: a step that dies before writing its own
    must leave "not measured", not the earlier numbers."""
    stale = [] if args.skip_tests else [folder / "logs" / "tests.xml"]
    stale += [] if args.skip_bench else [folder / "results.json", folder / "results.md"]
    for path in stale:
        path.unlink(missing_ok=True)


def missing_tools() -> list[str]:
    """What the build, tests or benchmarks need and this machine lacks."""
    from torch.utils.cpp_extension import CUDA_HOME

    missing = [] if CUDA_HOME else ["CUDA toolkit (nvcc; set CUDA_HOME)"]
    missing += [] if shutil.which("ninja") else ["ninja"]
    modules = ("triton", "pybind11", "pytest_benchmark", "pytorch_grad_cam", "onnxruntime")
    return missing + [name for name in modules if importlib.util.find_spec(name) is None]


def print_plan(steps: list[Step], folder: Path, args: argparse.Namespace) -> None:
    print(f"GPU check plan (dry run, nothing is run); results folder: {folder}")
    print(f"budget: {args.budget_s:.0f} s, of which {SUMMARY_RESERVE_S} s are kept for the summary")
    total = len(steps) + 1
    for i, step in enumerate(steps, 1):
        print(f"[{i}/{total}] {step.name}: {describe(step)}")
    source = (
        "results.json of the benchmark steps above" if not args.skip_bench else f"the existing {folder}/results.json"
    )
    print(
        f"[{total}/{total}] summary: targets of bench/targets.py on {source}; "
        f"writes {folder / 'gpu_check.md'} and {folder / 'gpu_check.json'}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    folder = results_folder(args, device_name() if cuda else PLACEHOLDER_FOLDER)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        steps = plan(args, folder, Path(work))
        if args.dry_run:
            print_plan(steps, folder, args)
            return 0
        if not cuda:
            print(
                f"error: no CUDA device visible (torch {torch.__version__}, built for CUDA {torch.version.cuda}): "
                "this check needs a GPU; --dry-run shows its steps",
                file=sys.stderr,
            )
            return 2
        for name in missing_tools():
            print(f"warning: {name} is missing; the steps that need it will fail or skip", file=sys.stderr)
        deadline = time.monotonic() + args.budget_s - SUMMARY_RESERVE_S
        _remove_stale_outputs(folder, args)
        outcomes, parts = [], []
        for step in steps:
            left = deadline - time.monotonic()
            if left < MIN_STEP_S:
                outcomes.append(StepOutcome(step.name, "skipped: budget spent", 0.0, str(step.log)))
                continue
            print(f"[{step.name}] {describe(step)}", flush=True)
            outcome = run_step(step, left)
            outcomes.append(replace(outcome, log=os.path.relpath(outcome.log, folder)))  # as the summary links it
            print(f"[{step.name}] {outcomes[-1].status} in {outcomes[-1].seconds:.0f} s", flush=True)
            if step.results is not None:
                parts += [json.loads(p.read_text()) for p in sorted(step.results.glob("*/results.json"))]
                if parts:
                    write_results(folder, parts)
    results_json = folder / "results.json"
    data = json.loads(results_json.read_text()) if results_json.exists() else {"benchmarks": []}
    tests = junit_counts(folder / "logs" / "tests.xml")
    if args.skip_tests:
        tests["note"] = "tests not run by this invocation; " + tests.get("note", "counts of the earlier logs/tests.xml")
    summary = write_summary(
        folder, " ".join(["bench/gpu_check.sh", *argv]), collect_environment(), outcomes, tests, evaluate(data)
    )
    print(summary.read_text())
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
