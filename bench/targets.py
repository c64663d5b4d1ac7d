"""The GPU performance targets, evaluated on pytest-benchmark JSON (``results.json`` of ``python -m bench.run``).

Each target compares one benchmark member with a reference member of the same
group (ratios of median wall times, or of an ``extra_info`` value), or reads one
``extra_info`` value, and holds only at the shapes and dtype it is stated for.
A ``results.json`` may hold one member several times (``bench/gpu_check.sh
--attention`` merges one run per shape and dtype): a target reads the entry
whose ``extra_info`` matches its ``expect`` and the reference entry matching
its ``reference_expect`` (its ``expect`` unless stated); a member measured only
at other shapes or dtypes is reported as not measured. :data:`BENCH_ENV` pins
the shapes for a ``--quick`` run.

The attention-mining targets hold for each Triton backend of
:data:`ATTENTION_BACKENDS` at the ResNet-50 shapes :data:`ATTN_SHAPE`, fp32:
the full step (forward + backward) >= 10x eager and >= 4x ``torch.compile``
of the eager chain, the forward alone >= 2x ``torch.compile``, device-time
bandwidth (``device_bandwidth_frac_of_peak``) >= 0.5 of the device's peak,
peak memory <= 0.5x eager's; and the full step at each dtype of
:data:`LOW_PRECISION` takes at most the time of the fp32 full step. That
comparison reads two runs of the benchmark (``--attention`` runs fp32, bf16 and
fp16 at those shapes): a dtype that was not run is reported as not measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# ResNet-50 attention-mining step: B images x classes pairs, C channels, h x w features -> H x W images
ATTN_SHAPE = (32, 2, 2048, 7, 7, 224, 224)
ATTENTION_BACKENDS = ("triton", "fused")  # bench_attention_erase members: today's kernels and the fused redesign
LOW_PRECISION = ("bfloat16", "float16")  # full step no slower than fp32
# class_attention: B images, C channels (7 x 7 -> 224 x 224 is the benchmark's default), K classes each
CAM_BATCH, CAM_CHANNELS, CAM_CLASSES = 32, 512, (5, 20)
ONNX_SIZE, ONNX_BATCH = 224, 8
AMP_BATCH, AMP_SIZE = 32, 224  # bench_gain_step's resnet50 group always runs at this shape

BENCH_ENV = {
    "GAINX_BENCH_ATTN": ",".join(map(str, ATTN_SHAPE)),
    "GAINX_BENCH_DTYPE": "float32",
    "GAINX_BENCH_BATCH": str(CAM_BATCH),
    "GAINX_BENCH_CHANNELS": str(CAM_CHANNELS),
    "GAINX_BENCH_CLASSES": ",".join(map(str, CAM_CLASSES)),
    "GAINX_BENCH_ONNX": f"{ONNX_SIZE},{ONNX_BATCH}",
}

SPEEDUP = "speedup"  # reference median / member median >= bound
TIME_RATIO = "time ratio"  # member median / reference median <= bound
EXTRA_AT_LEAST = "extra at least"  # member extra_info[key] >= bound
EXTRA_RATIO = "extra ratio"  # member extra_info[key] / reference extra_info[key] <= bound


@dataclass(frozen=True)
class Target:
    """One target: ``member`` of benchmark ``group`` against ``bound`` (see the kinds above).

    ``expect``: extra_info entries the member must have been run with; ``reference_expect``: those of the
    reference (``None``: the same as ``expect``)."""

    name: str
    group: str
    member: str
    kind: str
    bound: float
    reference: str | None = None
    key: str | None = None
    expect: dict[str, object] = field(default_factory=dict)
    reference_expect: dict[str, object] | None = None

    @property
    def bound_text(self) -> str:
        return f"{'>=' if self.kind in (SPEEDUP, EXTRA_AT_LEAST) else '<='} {_with_unit(self.kind, self.bound)}"


def _with_unit(kind: str, value: float) -> str:
    return f"{value:.3g}" if kind == EXTRA_AT_LEAST else f"{value:.3g}x"


@dataclass(frozen=True)
class Result:
    target: Target
    value: float | None  # None: not measured
    met: bool | None  # None: not measured
    note: str = ""

    @property
    def value_text(self) -> str:
        return self.note if self.value is None else _with_unit(self.target.kind, self.value)

    @property
    def met_text(self) -> str:
        return "not measured" if self.met is None else ("met" if self.met else "NOT met")


def _attention_run(dtype: str = "float32") -> dict[str, object]:
    """The extra_info of a bench_attention_erase member run at :data:`ATTN_SHAPE` in ``dtype``."""
    return {"shape": "B,classes,C,h,w,H,W=" + ",".join(map(str, ATTN_SHAPE)), "dtype": f"torch.{dtype}"}


def _attention_targets(backend: str) -> list[Target]:
    """The attention-mining step's targets for the Triton ``backend`` (a member name of bench_attention_erase)."""
    where = f"attention/mask/erase, {backend} backend (ResNet-50 shapes)"
    full = {"group": "attention_erase_full", "member": f"test_full[{backend}]"}
    fp32 = {**full, "expect": _attention_run()}
    return [
        Target(f"{where}: full step speedup vs eager", kind=SPEEDUP, bound=10.0, reference="test_full[eager]", **fp32),
        Target(
            f"{where}: full step speedup vs torch.compile of eager",
            kind=SPEEDUP,
            bound=4.0,
            reference="test_full[compile]",
            **fp32,
        ),
        Target(
            f"{where}: forward speedup vs torch.compile of eager",
            group="attention_erase_forward",
            member=f"test_forward[{backend}]",
            kind=SPEEDUP,
            bound=2.0,
            reference="test_forward[compile]",
            expect=_attention_run(),
        ),
        Target(
            f"{where}: full step device-time fraction of peak memory bandwidth",
            kind=EXTRA_AT_LEAST,
            bound=0.5,
            key="device_bandwidth_frac_of_peak",
            **fp32,
        ),
        Target(
            f"{where}: full step peak memory / eager's",
            kind=EXTRA_RATIO,
            bound=0.5,
            reference="test_full[eager]",
            key="peak_mem_mb",
            **fp32,
        ),
        *(
            Target(
                f"{where}: full step time in {dtype} / in float32",
                kind=TIME_RATIO,
                bound=1.0,
                reference=full["member"],
                expect=_attention_run(dtype),
                reference_expect=_attention_run(),
                **full,
            )
            for dtype in LOW_PRECISION
        ),
    ]


def _class_attention_targets() -> list[Target]:
    targets = []
    references = (
        ("eager", "eager", 5.0),
        ("compile", "torch.compile of eager", 2.0),
        ("grad_cam", "pytorch-grad-cam", 100.0),
    )
    for k in CAM_CLASSES:
        common = {
            "group": f"class_attention-k{k}",
            "member": f"test_extension[{k}]",
            "expect": {"shape": f"B={CAM_BATCH} C={CAM_CHANNELS} 7x7->224x224 K={k}"},
        }
        targets += [
            Target(
                f"class_attention extension, K={k}: speedup vs {what}",
                kind=SPEEDUP,
                bound=bound,
                reference=f"test_{reference}[{k}]",
                **common,
            )
            for reference, what, bound in references
        ]
    return targets


TARGETS: tuple[Target, ...] = (
    *(target for backend in ATTENTION_BACKENDS for target in _attention_targets(backend)),
    *_class_attention_targets(),
    Target(
        "GAIN training step, resnet50 with AMP: time / plain step's",
        group="gain_step_resnet50_amp",
        member="test_gain_step_amp",
        reference="test_plain_classification_step_amp",
        kind=TIME_RATIO,
        bound=2.3,
        expect={"batch": AMP_BATCH, "image_size": AMP_SIZE},
    ),
    Target(
        "ONNX Runtime CUDA, attention model (top-1): latency / plain classifier's",
        group="onnx_attention_resnet18_cuda",
        member="test_attention_graph[1-CUDAExecutionProvider]",
        reference="test_plain_classifier[CUDAExecutionProvider]",
        kind=TIME_RATIO,
        bound=1.2,
        expect={"image_size": ONNX_SIZE, "batch": ONNX_BATCH},
    ),
)


def _pick(benchmarks: list[dict], group: str, name: str, expect: dict[str, object]) -> dict | str:
    """The entry ``name`` of ``group`` whose extra_info has every item of ``expect``, or why there is none."""
    runs = [b for b in benchmarks if b.get("group") == group and b["name"] == name]
    if not runs:
        return f"no {name} in group {group}"
    for run in runs:
        if all(run["extra_info"].get(key) == want for key, want in expect.items()):
            return run
    key, want = next((k, v) for k, v in expect.items() if any(r["extra_info"].get(k) != v for r in runs))
    got = " / ".join(dict.fromkeys(str(r["extra_info"].get(key)) for r in runs))
    return f"{name} ran with {key}={got}, the target is at {key}={want}"


def _not_measured(target: Target, why: str) -> Result:
    return Result(target, None, None, f"not measured: {why}")


def evaluate_one(target: Target, benchmarks: list[dict]) -> Result:
    """``target`` on the members of pytest-benchmark's ``benchmarks`` list."""
    member = _pick(benchmarks, target.group, target.member, target.expect)
    reference = None
    if target.reference:
        expect = target.expect if target.reference_expect is None else target.reference_expect
        reference = _pick(benchmarks, target.group, target.reference, expect)
    missing = [found for found in (member, reference) if isinstance(found, str)]
    if missing:
        return _not_measured(target, "; ".join(missing))
    if target.kind == SPEEDUP:
        value = reference["stats"]["median"] / member["stats"]["median"]
    elif target.kind == TIME_RATIO:
        value = member["stats"]["median"] / reference["stats"]["median"]
    else:
        values = [m["extra_info"].get(target.key, math.nan) for m in (member, reference) if m is not None]
        if any(v is None or math.isnan(v) for v in values):
            return _not_measured(target, f"{target.key} is not recorded (n/a on this device)")
        value = values[0] if target.kind == EXTRA_AT_LEAST else values[0] / values[1]
    met = value >= target.bound if target.kind in (SPEEDUP, EXTRA_AT_LEAST) else value <= target.bound
    return Result(target, value, met)


def evaluate(data: dict, targets: tuple[Target, ...] = TARGETS) -> list[Result]:
    """Every target on pytest-benchmark JSON ``data`` (the parsed ``results.json``)."""
    return [evaluate_one(t, data.get("benchmarks", [])) for t in targets]
