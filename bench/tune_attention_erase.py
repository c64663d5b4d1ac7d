"""Tuning sweep of the fused attention-erase backend's tiles on a CUDA device, under a wall-clock budget.

    python -m bench.tune_attention_erase [--budget-s 120] [--out tuning.json] [--shapes B,classes,C,h,w,H,W ...]

The forward tile (``_map_erase_kernel``) and the backward tile (``_erase_backward_kernel``) are swept
independently over :data:`gainx.ops.attention_erase_fused.TILE_CANDIDATES`. A candidate whose kernel spills
registers when compiled for sm_90 (:mod:`bench.sm90`, ptxas' report) is pruned without being timed. Each kept
candidate is timed at every shape with CUDA events (median of :data:`REPEATS` calls of the forward, or of the
backward of one recorded forward), fp32. The sweep stops when the budget is spent; what was not timed is listed
as such. Writes JSON: every measurement, the pruned candidates and the fastest tile per phase and shape; the
module's defaults are not changed (a default moves only after a measured win).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.targets import ATTN_SHAPE

REPEATS = 20
SHAPES = (ATTN_SHAPE, (4, *ATTN_SHAPE[1:]), (32, 2, 2048, 14, 14, 448, 448))  # ResNet-50, small batch, large map


def parse_shape(text: str) -> tuple[int, ...]:
    shape = tuple(int(v) for v in text.split(","))
    if len(shape) != 7:
        raise argparse.ArgumentTypeError(f"a shape is 7 integers B,classes,C,h,w,H,W; got {text!r}")
    return shape


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.tune_attention_erase", description=__doc__)
    parser.add_argument("--budget-s", type=float, default=120.0, help="wall-clock limit of the sweep (120)")
    parser.add_argument("--out", type=Path, default=Path("tuning.json"), help="JSON output (tuning.json)")
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=list(SHAPES), help="B,classes,C,h,w,H,W")
    return parser.parse_args(argv)


def _median_ms(fn: Callable[[], object]) -> float:
    import torch

    fn()  # compile and warm up
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _phase_timer(shape: tuple[int, ...], phase: str) -> Callable[[], float]:
    """A function timing ``phase`` of the fused op at ``shape`` with the module's current tiles."""
    import torch

    from gainx.ops.attention_erase_fused import attention_erase_fused

    B, classes, C, h, w, H, W = shape
    gen = torch.Generator(device="cuda").manual_seed(0)
    leaves = [
        torch.randn(B * classes, C, h, w, generator=gen, device="cuda").requires_grad_(True),
        torch.randn(B * classes, C, h, w, generator=gen, device="cuda").requires_grad_(True),
        torch.rand(B, 3, H, W, generator=gen, device="cuda").requires_grad_(True),
    ]
    index = torch.arange(B, device="cuda").repeat_interleave(classes)
    if phase == "forward":
        return lambda: _median_ms(lambda: attention_erase_fused(*leaves, index))

    def backward() -> float:
        out = attention_erase_fused(*leaves, index)
        weights = [torch.randn_like(o) for o in out]
        return _median_ms(lambda: torch.autograd.grad(list(out), leaves, weights, retain_graph=True))

    return backward


def sweep(shapes: list[tuple[int, ...]], budget_s: float) -> dict:
    """Prune spilling candidates, then time the rest per phase and shape until ``budget_s`` is spent."""
    from bench.sm90 import fused_tile_usage
    from gainx.ops import attention_erase_fused as fused

    deadline = time.monotonic() + budget_s
    defaults = {"forward": fused.FORWARD_TILE, "backward": fused.BACKWARD_TILE}
    attribute = {"forward": "FORWARD_TILE", "backward": "BACKWARD_TILE"}
    report: dict = {"defaults": {k: list(v) for k, v in defaults.items()}, "pruned": [], "timed": [], "not_timed": []}
    try:
        for phase in ("forward", "backward"):
            for tile in fused.TILE_CANDIDATES:
                if time.monotonic() > deadline:
                    report["not_timed"] += [{"phase": phase, "tile": list(tile), "shape": list(s)} for s in shapes]
                    continue
                usage = fused_tile_usage(tile, phase)
                if usage["spill_bytes"]:
                    report["pruned"].append({"phase": phase, "tile": list(tile), **usage})
                    continue
                setattr(fused, attribute[phase], tile)
                for shape in shapes:
                    entry = {"phase": phase, "tile": list(tile), "shape": list(shape), **usage}
                    if time.monotonic() > deadline:
                        report["not_timed"].append(entry)
                        continue
                    report["timed"].append({**entry, "median_ms": _phase_timer(shape, phase)()})
    finally:
        for phase, tile in defaults.items():
            setattr(fused, attribute[phase], tile)
    report["best"] = _best(report["timed"])
    return report


def _best(timed: list[dict]) -> list[dict]:
    """The fastest tile per (phase, shape)."""
    best: dict[tuple, dict] = {}
    for entry in timed:
        key = (entry["phase"], tuple(entry["shape"]))
        if key not in best or entry["median_ms"] < best[key]["median_ms"]:
            best[key] = entry
    return list(best.values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: the tuning sweep times kernels on a CUDA device; none is visible", file=sys.stderr)
        return 2
    report = {"device": torch.cuda.get_device_name(), "budget_s": args.budget_s, **sweep(args.shapes, args.budget_s)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    for entry in report["best"]:
        print(f"{entry['phase']:8s} {entry['shape']}: tile {entry['tile']} {entry['median_ms']:.4f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
