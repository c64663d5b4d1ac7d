"""The GPU performance targets, evaluated on pytest-benchmark JSON (``results.json`` of ``python -m bench.run``).

Each target compares one benchmark member with a reference member of the same
group (ratios of median times, or of an ``extra_info`` value), or reads one
``extra_info`` value, and holds only at the shapes it is stated for: a member
measured at other shapes is reported as not measured. :data:`BENCH_ENV` pins
those shapes for a ``--quick`` run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# ResNet-50 attention-mining step: B images x classes pairs, C channels, h x w features -> H x W images
ATTN_SHAPE = (32, 2, 2048, 7, 7, 224, 224)
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
    """One target: ``member`` of benchmark ``group`` against ``bound`` (see the kinds above)."""

    name: str
    group: str
    member: str
    kind: str
    bound: float
    reference: str | None = None
    key: str | None = None
    expect: dict[str, object] = field(default_factory=dict)  # extra_info entries the member must have been run with

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


def _attention_targets() -> list[Target]:
    shape = {"shape": "B,classes,C,h,w,H,W=" + ",".join(map(str, ATTN_SHAPE)), "dtype": "torch.float32"}
    where = "fused Triton attention/mask/erase full step (ResNet-50 shapes)"
    common = {"group": "attention_erase_full", "member": "test_full[triton]", "expect": shape}
    return [
        Target(f"{where}: speedup vs eager", kind=SPEEDUP, bound=3.0, reference="test_full[eager]", **common),
        Target(
            f"{where}: speedup vs torch.compile of eager",
            kind=SPEEDUP,
            bound=1.3,
            reference="test_full[compile]",
            **common,
        ),
        Target(
            f"{where}: fraction of peak memory bandwidth",
            kind=EXTRA_AT_LEAST,
            bound=0.6,
            key="bandwidth_frac_of_peak",
            **common,
        ),
        Target(
            f"{where}: peak memory / eager's",
            kind=EXTRA_RATIO,
            bound=0.5,
            reference="test_full[eager]",
            key="peak_mem_mb",
            **common,
        ),
    ]


def _class_attention_targets() -> list[Target]:
    targets = []
    for k in CAM_CLASSES:
        common = {
            "group": f"class_attention-k{k}",
            "member": f"test_extension[{k}]",
            "expect": {"shape": f"B={CAM_BATCH} C={CAM_CHANNELS} 7x7->224x224 K={k}"},
        }
        targets += [
            Target(
                f"class_attention extension, K={k}: speedup vs eager",
                kind=SPEEDUP,
                bound=5.0,
                reference=f"test_eager[{k}]",
                **common,
            ),
            Target(
                f"class_attention extension, K={k}: speedup vs pytorch-grad-cam",
                kind=SPEEDUP,
                bound=100.0,
                reference=f"test_grad_cam[{k}]",
                **common,
            ),
        ]
    return targets


TARGETS: tuple[Target, ...] = (
    *_attention_targets(),
    *_class_attention_targets(),
    Target(
        "GAIN training step, resnet50 with AMP: time / plain step's",
        group="gain_step_resnet50_amp",
        member="test_gain_step_amp",
        reference="test_plain_classification_step_amp",
        kind=TIME_RATIO,
        bound=2.2,
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


def _not_measured(target: Target, why: str) -> Result:
    return Result(target, None, None, f"not measured: {why}")


def evaluate_one(target: Target, benchmarks: list[dict]) -> Result:
    """``target`` on the members of pytest-benchmark's ``benchmarks`` list."""
    members = {b["name"]: b for b in benchmarks if b.get("group") == target.group}
    needed = [target.member] + ([target.reference] if target.reference else [])
    missing = [name for name in needed if name not in members]
    if missing:
        return _not_measured(target, f"no {', '.join(missing)} in group {target.group}")
    member = members[target.member]
    for key, want in target.expect.items():
        got = member["extra_info"].get(key)
        if got != want:
            return _not_measured(target, f"{target.member} ran with {key}={got}, the target is at {key}={want}")
    reference = members.get(target.reference)
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
