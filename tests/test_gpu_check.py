"""The GPU check (bench/gpu_check.py) on a CPU machine: arguments, the dry run, step running, result merging,
the target evaluation on synthetic pytest-benchmark JSON, the summary writer, and the CUDA-only benchmark
members skipping cleanly."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import pytest
import torch

from bench import gpu_check
from bench.common import peak_bandwidth
from bench.gpu_summary import StepOutcome, collect_environment, junit_counts, write_summary
from bench.targets import ATTN_SHAPE, TARGETS, evaluate

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA device")
SHAPE = "B,classes,C,h,w,H,W=" + ",".join(map(str, ATTN_SHAPE))
ATTN = {"shape": SHAPE, "dtype": "torch.float32"}
LOW = ("torch.bfloat16", "torch.float16")
EAGER_FULL, COMPILE_FULL, EAGER_FORWARD, COMPILE_FORWARD, EAGER_MEM = 10.0, 4.0, 4.0, 2.0, 100.0


class Attn(NamedTuple):
    """One Triton backend's synthetic attention-mining results: fp32 full-step and forward medians (s), device-time
    bandwidth fraction, peak memory (MB), and its bf16 and fp16 full-step medians as a fraction of fp32's."""

    full: float
    forward: float
    frac: float
    mem: float
    low: float


def _bench(group: str, name: str, median: float, **extra: object) -> dict:
    return {
        "group": group,
        "name": name,
        "stats": {"median": median, "mean": median, "stddev": 0.0, "rounds": 5},
        "extra_info": extra,
    }


def _attention(backends: dict[str, Attn]) -> list[dict]:
    """bench_attention_erase's members at the target shapes: fp32 with the eager and compile references, then one
    run per low-precision dtype (as --attention merges its runs)."""
    full, forward = "attention_erase_full", "attention_erase_forward"
    runs = [
        _bench(full, "test_full[eager]", EAGER_FULL, peak_mem_mb=EAGER_MEM, baseline=True, **ATTN),
        _bench(full, "test_full[compile]", COMPILE_FULL, peak_mem_mb=80.0, **ATTN),
        _bench(forward, "test_forward[eager]", EAGER_FORWARD, baseline=True, **ATTN),
        _bench(forward, "test_forward[compile]", COMPILE_FORWARD, **ATTN),
    ]
    for name, a in backends.items():
        info = {"peak_mem_mb": a.mem, "device_bandwidth_frac_of_peak": a.frac, "bandwidth_frac_of_peak": a.frac / 10}
        runs += [
            _bench(full, f"test_full[{name}]", a.full, **info, **ATTN),
            _bench(forward, f"test_forward[{name}]", a.forward, **ATTN),
        ]
    for dtype in LOW:
        low = {"shape": SHAPE, "dtype": dtype}
        runs.append(_bench(full, "test_full[eager]", EAGER_FULL / 2, baseline=True, **low))
        runs += [_bench(full, f"test_full[{name}]", a.full * a.low, **low) for name, a in backends.items()]
    return runs


def _results(triton: Attn, fused: Attn, extension: float, compiled: float, gain_amp: float, onnx_top1: float) -> dict:
    """Synthetic pytest-benchmark JSON with every member the targets read, at the target shapes (medians in s)."""
    benchmarks = [
        *_attention({"triton": triton, "fused": fused}),
        _bench("gain_step_resnet50_amp", "test_plain_classification_step_amp", 1.0, batch=32, image_size=224),
        _bench("gain_step_resnet50_amp", "test_gain_step_amp", gain_amp, batch=32, image_size=224),
        _bench(
            "onnx_attention_resnet18_cuda", "test_plain_classifier[CUDAExecutionProvider]", 1.0, batch=8, image_size=224
        ),
        _bench(
            "onnx_attention_resnet18_cuda",
            "test_attention_graph[1-CUDAExecutionProvider]",
            onnx_top1,
            batch=8,
            image_size=224,
        ),
    ]
    for k in (5, 20):
        shape = {"shape": f"B=32 C=512 7x7->224x224 K={k}"}
        benchmarks += [
            _bench(f"class_attention-k{k}", f"test_eager[{k}]", 5.0, baseline=True, **shape),
            _bench(f"class_attention-k{k}", f"test_extension[{k}]", extension, **shape),
            _bench(f"class_attention-k{k}", f"test_compile[{k}]", compiled, **shape),
            _bench(f"class_attention-k{k}", f"test_grad_cam[{k}]", 100.0, **shape),
        ]
    return {"device": "cuda-nvidia-h200", "quick": True, "machine_info": {}, "benchmarks": benchmarks}


# every target met / every target not met (see the bounds in bench/targets.py)
MET = {
    "triton": Attn(full=0.8, forward=0.8, frac=0.6, mem=40.0, low=0.9),
    "fused": Attn(full=0.5, forward=0.5, frac=0.75, mem=30.0, low=0.7),
    "extension": 0.5,
    "compiled": 1.25,
    "gain_amp": 2.2,
    "onnx_top1": 1.15,
}
NOT_MET = {
    "triton": Attn(full=2.0, forward=1.6, frac=0.3, mem=60.0, low=1.2),
    "fused": Attn(full=1.25, forward=1.25, frac=0.45, mem=55.0, low=1.1),
    "extension": 2.0,
    "compiled": 3.0,
    "gain_amp": 2.5,
    "onnx_top1": 1.3,
}


def _attn_target(backend: str, what: str) -> str:
    return f"attention/mask/erase, {backend} backend (ResNet-50 shapes): {what}"


def _values(data: dict) -> dict[str, tuple[float | None, bool | None]]:
    return {r.target.name: (r.value, r.met) for r in evaluate(data)}


# --- arguments and the dry run ------------------------------------------------------------------------------------


def test_arguments_defaults_and_flags(tmp_path: Path) -> None:
    args = gpu_check.parse_args([])
    assert (args.dry_run, args.skip_build, args.skip_tests, args.skip_bench, args.budget_s) == (
        False,
        False,
        False,
        False,
        540.0,
    )
    args = gpu_check.parse_args(
        ["--skip-build", "--skip-tests", "--budget-s", "300", "--arch", "8.0", "--out", str(tmp_path)]
    )
    assert (args.skip_build, args.skip_tests, args.budget_s, args.arch, args.out) == (
        True,
        True,
        300.0,
        "8.0",
        tmp_path,
    )


def test_budget_too_small_is_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--budget-s", "10"])
    assert "--budget-s must exceed" in capsys.readouterr().err


def test_dry_run_prints_every_step_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dry run started a process")

    monkeypatch.setattr(gpu_check.subprocess, "Popen", refuse)
    monkeypatch.setattr(gpu_check, "run_step", refuse)
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pip install --no-build-isolation --no-deps -v ." in out
    assert "setup.py build_ext --inplace" in out
    assert "FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0" in out
    assert "-m pytest -m cuda tests" in out and "tests.xml" in out
    for module in gpu_check.BENCH_MODULES:
        assert f"-m bench.run --quick -k {module} " in out
    assert f"GAINX_BENCH_ATTN={','.join(map(str, ATTN_SHAPE))}" in out and "GAINX_BENCH_CHANNELS=512" in out
    assert "[8/8] summary:" in out and "gpu_check.md" in out
    assert list(tmp_path.iterdir()) == []


def test_dry_run_skip_build_and_arch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert gpu_check.main(["--dry-run", "--skip-build", "--skip-bench", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pip install" not in out and "build_ext" not in out and "bench.run" not in out
    assert "[1/2] tests:" in out and "the existing" in out
    gpu_check.main(["--dry-run", "--arch", "8.0;9.0", "--out", str(tmp_path)])
    assert "TORCH_CUDA_ARCH_LIST='8.0;9.0'" in capsys.readouterr().out


def test_dry_run_attention_mode(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--attention: build, the two Triton backends' CUDA tests, the tile sweep with its share of the budget, one
    benchmark step per shape; everything under <out>/cuda-<gpu>/attention/."""
    assert gpu_check.main(["--dry-run", "--attention", "--budget-s", "400", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"results folder: {tmp_path / gpu_check.PLACEHOLDER_FOLDER / 'attention'}" in out
    assert "pip install --no-build-isolation" in out and "build_ext --inplace" in out
    assert "-m pytest -m cuda tests/test_attention_erase_fused.py tests/test_attention_erase_triton.py " in out
    assert f"-m bench.tune_attention_erase --budget-s {400 * gpu_check.TUNE_SHARE:.0f} --out" in out
    for label, (shape, dtype) in gpu_check.ATTENTION_RUNS.items():
        env = f"GAINX_BENCH_ATTN={','.join(map(str, shape))} GAINX_BENCH_DTYPE={dtype}"
        assert f"bench-attention_erase-{label}: {env}" in out
    assert "-k bench_attention_erase " in out and "bench_class_attention" not in out
    assert "[10/10] summary:" in out and list(tmp_path.iterdir()) == []
    gpu_check.main(["--dry-run", "--attention", "--skip-build", "--skip-bench", "--out", str(tmp_path)])
    assert "[1/2] tests:" in capsys.readouterr().out


def test_tuning_sweep_prunes_spilling_tiles_and_respects_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep times only non-spilling candidates, lists what the budget left untimed, restores the defaults
    and reports the fastest tile per phase and shape (spills and timings stand-ins: no GPU here)."""
    from bench import sm90
    from bench import tune_attention_erase as tune
    from gainx.ops import attention_erase_fused as fused

    spilling = fused.TILE_CANDIDATES[0]
    monkeypatch.setattr(
        sm90, "fused_tile_usage", lambda tile, phase: {"registers": 255 if tile == spilling else 100,
                                                       "spill_bytes": 8 if tile == spilling else 0}
    )  # fmt: skip
    clock = iter(range(1000))
    monkeypatch.setattr(tune.time, "monotonic", lambda: float(next(clock)))

    def timer(shape: tuple[int, ...], phase: str):  # noqa: ANN202
        tiles = {"forward": fused.FORWARD_TILE, "backward": fused.BACKWARD_TILE}
        return lambda: float(tiles[phase].block_w * (2 if phase == "backward" else 1) + shape[0])

    monkeypatch.setattr(tune, "_phase_timer", timer)
    defaults = (fused.FORWARD_TILE, fused.BACKWARD_TILE)
    shapes = [(2, 1, 4, 3, 3, 8, 8), (1, 1, 4, 3, 3, 8, 8)]
    report = tune.sweep(shapes, budget_s=14)
    assert (fused.FORWARD_TILE, fused.BACKWARD_TILE) == defaults
    assert {tuple(p["tile"]) for p in report["pruned"]} == {spilling} and report["pruned"][0]["phase"] == "forward"
    assert report["timed"] and all(tuple(t["tile"]) != spilling for t in report["timed"])
    assert report["not_timed"], "a 14 s budget on a clock that ticks 1 s per call cannot time everything"
    timed = {(t["phase"], tuple(t["tile"]), tuple(t["shape"])) for t in report["timed"]}
    assert not timed & {(n["phase"], tuple(n["tile"]), tuple(n["shape"])) for n in report["not_timed"]}
    for best in report["best"]:
        same = [t["median_ms"] for t in report["timed"] if (t["phase"], t["shape"]) == (best["phase"], best["shape"])]
        assert best["median_ms"] == min(same)
    with pytest.raises(SystemExit):
        tune.parse_args(["--shapes", "1,2,3"])


@NO_CUDA
def test_without_cuda_the_check_refuses_to_start(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert gpu_check.main(["--skip-build", "--out", str(tmp_path)]) == 2
    assert "no CUDA device visible" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --- running steps and the whole flow with stand-in commands -----------------------------------------------------


def _python_step(folder: Path, name: str, code: str, results: Path | None = None) -> gpu_check.Step:
    """A stand-in step running ``code``, logging to ``folder/logs/<name>.log``."""
    return gpu_check.Step(
        name, [sys.executable, "-c", code], folder / "logs" / f"{name}.log", {"GPU_CHECK_X": "1"}, results
    )


def test_run_step_reports_exit_status_and_keeps_the_log(tmp_path: Path) -> None:
    code = "import os, sys; print('hello', os.environ['GPU_CHECK_X']); sys.exit(3)"
    outcome = gpu_check.run_step(_python_step(tmp_path, "fails", code), timeout=60)
    assert outcome.status == "failed (exit 3)" and not outcome.ok
    assert "hello 1" in (tmp_path / "logs" / "fails.log").read_text()
    assert gpu_check.run_step(_python_step(tmp_path, "passes", "pass"), timeout=60).ok


def test_run_step_stops_a_step_that_runs_out_of_time(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "time.sleep(60)"
    )
    outcome = gpu_check.run_step(_python_step(tmp_path, "hangs", code), timeout=2)
    assert outcome.status == "timed out after 2 s" and outcome.seconds < 30


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, steps: list[gpu_check.Step]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "device_name", lambda: "cuda-test-gpu")
    monkeypatch.setattr(gpu_check, "missing_tools", list)
    monkeypatch.setattr(gpu_check, "plan", lambda args, folder, work: steps)
    monkeypatch.setattr(gpu_check, "collect_environment", lambda: {"gpu": "Test GPU", "driver": "1.2.3"})


def test_whole_check_merges_results_and_writes_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    folder, work = tmp_path / "out" / "cuda-test-gpu", tmp_path / "work"
    data = _results(**MET)
    halves = data["benchmarks"][:11], data["benchmarks"][11:]
    junit = (
        '<testsuites><testsuite><testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase></testsuite>'
        "</testsuites>"
    )
    steps = [_python_step(folder, "tests", f"open({str(folder / 'logs' / 'tests.xml')!r}, 'w').write({junit!r})")]
    for i, half in enumerate(halves):
        out = work / str(i) / "cuda-test-gpu" / "results.json"
        part = json.dumps({**data, "benchmarks": half})
        code = f"import pathlib; p = pathlib.Path({str(out)!r}); p.parent.mkdir(parents=True); p.write_text({part!r})"
        steps.append(_python_step(folder, f"bench-{i}", code, results=work / str(i)))
    _fake_gpu(monkeypatch, steps)
    (folder / "logs").mkdir(parents=True)
    (folder / "results.json").write_text("stale")  # an earlier run's results never reach the summary
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 0
    merged = json.loads((folder / "results.json").read_text())
    assert merged["benchmarks"] == data["benchmarks"]
    assert "## attention_erase_full" in (folder / "results.md").read_text()
    summary = json.loads((folder / "gpu_check.json").read_text())
    assert [t["met"] for t in summary["targets"]] == [True] * len(TARGETS)
    assert summary["tests"]["passed"] == 1 and summary["tests"]["failures"] == ["tests.test_a::test_bad"]
    assert [s["status"] for s in summary["steps"]] == ["ok"] * 3
    assert [s["log"] for s in summary["steps"]] == ["logs/tests.log", "logs/bench-0.log", "logs/bench-1.log"]
    assert "# GPU check on Test GPU" in capsys.readouterr().out


def test_a_step_out_of_budget_is_stopped_and_the_rest_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = [_python_step(tmp_path, "slow", "import time; time.sleep(60)"), _python_step(tmp_path, "next", "pass")]
    _fake_gpu(monkeypatch, steps)
    monkeypatch.setattr(gpu_check, "SUMMARY_RESERVE_S", 0)
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 1)
    assert gpu_check.main(["--skip-build", "--budget-s", "3", "--out", str(tmp_path / "out")]) == 1
    summary = json.loads((tmp_path / "out" / "cuda-test-gpu" / "gpu_check.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["timed out after 3 s", "skipped: budget spent"]
    assert all(t["met"] is None for t in summary["targets"])
    assert summary["tests"]["note"] == "no tests.xml"


# --- target evaluation -------------------------------------------------------------------------------------------


def _check_attention_values(values: dict[str, tuple[float | None, bool | None]], results: dict) -> None:
    """Each Triton backend's attention-mining values are the ratios of the synthetic medians and extra_info."""
    for backend in ("triton", "fused"):
        a = results[backend]
        assert values[_attn_target(backend, "full step speedup vs eager")][0] == pytest.approx(EAGER_FULL / a.full)
        speedup = values[_attn_target(backend, "full step speedup vs torch.compile of eager")][0]
        assert speedup == pytest.approx(COMPILE_FULL / a.full)
        forward = values[_attn_target(backend, "forward speedup vs torch.compile of eager")][0]
        assert forward == pytest.approx(COMPILE_FORWARD / a.forward)
        frac = values[_attn_target(backend, "full step device-time fraction of peak memory bandwidth")][0]
        assert frac == pytest.approx(a.frac)
        assert values[_attn_target(backend, "full step peak memory / eager's")][0] == pytest.approx(a.mem / EAGER_MEM)
        for dtype in ("bfloat16", "float16"):
            ratio = values[_attn_target(backend, f"full step time in {dtype} / in float32")][0]
            assert ratio == pytest.approx(a.full * a.low / a.full)


def test_targets_met() -> None:
    values = _values(_results(**MET))
    assert all(met is True for _, met in values.values()), values
    assert len(values) == len(TARGETS)
    _check_attention_values(values, MET)
    assert values["class_attention extension, K=20: speedup vs pytorch-grad-cam"][0] == pytest.approx(100.0 / 0.5)
    assert values["class_attention extension, K=5: speedup vs torch.compile of eager"][0] == pytest.approx(1.25 / 0.5)
    assert values["GAIN training step, resnet50 with AMP: time / plain step's"][0] == pytest.approx(2.2)


def test_targets_not_met() -> None:
    values = _values(_results(**NOT_MET))
    assert all(met is False for _, met in values.values()), values
    _check_attention_values(values, NOT_MET)
    assert values["class_attention extension, K=5: speedup vs eager"][0] == pytest.approx(5.0 / 2.0)
    assert values["class_attention extension, K=20: speedup vs torch.compile of eager"][0] == pytest.approx(3.0 / 2.0)
    assert values["GAIN training step, resnet50 with AMP: time / plain step's"][0] == pytest.approx(2.5)
    assert values["ONNX Runtime CUDA, attention model (top-1): latency / plain classifier's"][0] == pytest.approx(1.3)


def test_targets_read_the_run_at_their_shape_and_dtype_from_merged_runs() -> None:
    """--attention merges one run per shape and dtype into one results.json, so a member appears several times: each
    target reads the member and its reference at the target's shape and dtype, wherever they come in the list."""
    data = _results(**MET)
    other = {"shape": "B,classes,C,h,w,H,W=32,2,2048,14,14,448,448", "dtype": "torch.float32"}
    attention = [b for b in data["benchmarks"] if b["extra_info"].get("dtype") == "torch.float32"]
    at_other_shape = [{**b, "extra_info": {**b["extra_info"], **other}} for b in attention]
    for b in at_other_shape:  # a 14x14 -> 448x448 run where every backend is much slower than eager
        b["stats"] = {**b["stats"], "median": 1.0 if "eager" in b["name"] else 50.0}
    merged = {**data, "benchmarks": at_other_shape[:3] + data["benchmarks"] + at_other_shape[3:]}
    results = evaluate(merged)
    assert all(r.met is True for r in results), [r.note for r in results if r.met is not True]
    assert [r.value for r in results] == [r.value for r in evaluate(data)]


def test_targets_not_measured_missing_member_other_shape_or_no_value() -> None:
    data = _results(**{**NOT_MET, "triton": Attn(full=1.0, forward=1.0, frac=math.nan, mem=math.nan, low=1.0)})
    data["benchmarks"] = [
        b
        for b in data["benchmarks"]
        if b["name"] != "test_grad_cam[5]" and b["extra_info"].get("dtype") != "torch.float16"
    ]
    next(b for b in data["benchmarks"] if b["name"] == "test_extension[20]")["extra_info"]["shape"] = "B=4 C=64"
    results = {r.target.name: r for r in evaluate(data)}
    missing = results["class_attention extension, K=5: speedup vs pytorch-grad-cam"]
    assert missing.met is None and "no test_grad_cam[5] in group class_attention-k5" in missing.note
    shape = results["class_attention extension, K=20: speedup vs eager"]
    assert shape.met is None and "ran with shape=B=4 C=64" in shape.note
    for what in ("full step device-time fraction of peak memory bandwidth", "full step peak memory / eager's"):
        result = results[_attn_target("triton", what)]
        assert result.met is None and "not recorded" in result.note
        assert results[_attn_target("fused", what)].met is False
    fp16 = results[_attn_target("fused", "full step time in float16 / in float32")]
    assert fp16.met is None
    assert "test_full[fused] ran with dtype=torch.float32 / torch.bfloat16, the target is at dtype=torch.float16" in (
        fp16.note
    )
    assert results[_attn_target("fused", "full step time in bfloat16 / in float32")].met is False
    assert results["class_attention extension, K=5: speedup vs eager"].met is False
    assert all(r.met is None for r in evaluate({"benchmarks": []}))


# --- summary, junit counts, peak bandwidth -----------------------------------------------------------------------


def test_summary_writer(tmp_path: Path) -> None:
    results = evaluate(_results(**{**NOT_MET, "triton": Attn(full=2.0, forward=1.6, frac=0.7, mem=60.0, low=1.2)}))
    environment = {"gpu": "NVIDIA H200", "driver": "550.54.15", "torch": "2.5.0", "triton": "3.1.0"}
    steps = [StepOutcome("tests", "ok", 61.2, "logs/tests.log"), StepOutcome("bench-x", "timed out after 9 s", 9, "l")]
    tests = {"passed": 40, "failed": 1, "errors": 0, "skipped": 2, "failures": ["tests.test_a::test_b"]}
    md = write_summary(tmp_path, "bench/gpu_check.sh --skip-build", environment, steps, tests, results).read_text()
    assert "# GPU check on NVIDIA H200" in md and "| driver | 550.54.15 |" in md and "| triton | 3.1.0 |" in md
    assert "passed 40, failed 1, errors 0, skipped 2" in md and "- tests.test_a::test_b" in md
    assert "| bench-x | timed out after 9 s | 9 | l |" in md
    assert "| 5x | >= 10x | NOT met |" in md and "| 0.7 | >= 0.5 | met |" in md
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["environment"] == environment and data["tests"] == tests
    assert data["targets"][0]["value"] == pytest.approx(EAGER_FULL / 2.0) and data["targets"][0]["met"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.md"]


def test_junit_counts(tmp_path: Path) -> None:
    xml = tmp_path / "tests.xml"
    xml.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="5">'
        '<testcase classname="tests.test_a" name="test_1"/>'
        '<testcase classname="tests.test_a" name="test_2"><failure message="boom">trace</failure></testcase>'
        '<testcase classname="tests.test_b" name="test_3"><skipped message="no cuda"/></testcase>'
        '<testcase classname="tests.test_b" name="test_4"><error message="setup"/></testcase>'
        '<testcase classname="tests.test_b" name="test_5"><system-out>x</system-out></testcase>'
        "</testsuite></testsuites>"
    )
    assert junit_counts(xml) == {
        "passed": 2,
        "failed": 1,
        "errors": 1,
        "skipped": 1,
        "failures": ["tests.test_a::test_2", "tests.test_b::test_4"],
    }
    assert junit_counts(tmp_path / "absent.xml")["note"] == "no absent.xml"


def test_peak_bandwidth_from_device_properties_or_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert peak_bandwidth(torch.device("cpu")) is None
    props = SimpleNamespace(name="NVIDIA H200", memory_clock_rate=3_201_000, memory_bus_width=6144)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    bandwidth, source = peak_bandwidth(torch.device("cuda"))
    assert bandwidth == pytest.approx(2 * 3.201e9 * 6144 / 8) and "device properties" in source
    props.memory_clock_rate = 0  # not reported: the data-sheet table by name
    assert peak_bandwidth(torch.device("cuda")) == (4.8e12, "data sheet value for H200")
    props.name = "NVIDIA H100 PCIe"
    assert peak_bandwidth(torch.device("cuda"))[0] == 2.0e12
    props.name = "Some Other GPU"
    assert peak_bandwidth(torch.device("cuda")) is None


# --- the CUDA-only benchmark members -----------------------------------------------------------------------------


@NO_CUDA
def test_cuda_only_benchmark_members_skip_with_a_reason() -> None:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "bench/bench_gain_step.py",
        "bench/bench_onnx_attention.py",
        "bench/bench_attention_erase.py",
        "-o",
        "python_files=bench_*.py",
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        "-q",
        "-rs",
        "-k",
        "amp or CUDAExecutionProvider or triton or fused",
    ]
    # pytest-benchmark disables itself in a child that inherits an xdist worker's environment
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "12 skipped" in res.stdout and "passed" not in res.stdout, res.stdout[-3000:]
    assert "timed on CUDA only (autocast fp16 + GradScaler, CUDA graphs)" in res.stdout
    assert "ONNX Runtime has no CUDA execution provider" in res.stdout


@NO_CUDA
def test_environment_without_cuda() -> None:
    environment = collect_environment()
    assert environment["gpu"] == "none" and environment["driver"] == "none"
    assert environment["torch"] == torch.__version__
    assert environment["gainx._C CUDA kernels"] == "no"
