"""Compile the attention-erase Triton kernels ahead of time for sm_90 (Triton's own ptxas, no GPU needed),
so CI catches kernels that the interpreter runs but the compiler rejects, and checks the PTX for precision
that the interpreter cannot show: under ``TRITON_INTERPRET=1`` a Python float stays a float64, while a
compiled kernel receives it as the type its signature declares.

The fused backend's tile kernels are also checked for register spills at their default tiles (ptxas' report).

The compile runs in a child process without ``TRITON_INTERPRET`` (the test session sets it before the
kernels are imported, which makes them interpreted functions); the machinery is :mod:`bench.sm90`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# (module, kernel): every kernel of both Triton backends (the fused one reuses the two channel kernels)
KERNELS = tuple(
    ("gainx.ops.attention_erase_triton", name)
    for name in (
        "_gradcam_partial_kernel",
        "_map_stats_kernel",
        "_erase_kernel",
        "_erase_backward_kernel",
        "_map_backward_kernel",
        "_gradcam_backward_kernel",
    )
) + tuple(
    ("gainx.ops.attention_erase_fused", name)
    for name in ("_map_erase_kernel", "_erase_backward_kernel", "_map_backward_kernel")
)
CONSTEXPRS = {
    "BLOCK_H": 16,
    "BLOCK_W": 32,
    "HP": 16,
    "WP": 16,
    "KP": 4,
    "BLOCK_C": 64,
    "BLOCK_S": 64,
    "NEED_IMAGES": True,
    "NEED_FEATURES": True,
    "NEED_GRADS": True,
    "HC": 8,
    "WC": 8,
    "NEED_MAP": True,
    "HAS_GE": True,
    "HAS_GCAM": True,
}


def _name(module: str, kernel: str) -> str:
    return f"{module.rsplit('.', 1)[1]}.{kernel}"


def _ptx(dtype: str) -> dict[str, str]:
    """PTX of every kernel with ``dtype`` ("fp32" or "fp64") data pointers (:func:`bench.sm90.compile_ptx`)."""
    import importlib

    from bench.sm90 import compile_ptx

    return {
        _name(module, kernel): compile_ptx(getattr(importlib.import_module(module), kernel), dtype, CONSTEXPRS)
        for module, kernel in KERNELS
    }


def _usage() -> dict[str, dict[str, int]]:
    """ptxas registers and spills of the fused tile kernels at their default forward and backward tiles."""
    from bench.sm90 import fused_tile_usage
    from gainx.ops.attention_erase_fused import BACKWARD_TILE, FORWARD_TILE

    tiles = {"forward": FORWARD_TILE, "backward": BACKWARD_TILE}
    return {phase: fused_tile_usage(tile, phase) for phase, tile in tiles.items()}


@pytest.fixture(scope="module")
def compiled() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600, cwd=os.getcwd()
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def ptx(compiled: dict) -> dict[str, dict[str, str]]:
    return compiled["ptx"]


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_every_kernel_compiles_for_sm90(ptx: dict[str, dict[str, str]], dtype: str) -> None:
    assert sorted(ptx[dtype]) == sorted(_name(*k) for k in KERNELS)
    for name, code in ptx[dtype].items():
        assert f".entry {name.split('.')[1]}" in code, name


def test_fused_tile_kernels_do_not_spill_at_their_default_tiles(compiled: dict) -> None:
    """Spilled registers go to local memory on every access: a default tile that spills is a regression."""
    assert sorted(compiled["usage"]) == ["backward", "forward"]
    for phase, usage in compiled["usage"].items():
        assert usage["spill_bytes"] == 0, f"{phase} tile: {usage}"
        assert 0 < usage["registers"] <= 255, f"{phase} tile: {usage}"


def test_fp64_kernels_take_fp64_scalars(ptx: dict[str, dict[str, str]]) -> None:
    """sigma, omega and eps reach an fp64 kernel unrounded: no fp32 parameter, nothing widened from fp32.
    A Python float passed to an unannotated parameter arrives as fp32, so ``1 + eps`` (eps = 1e-7)
    or ``sigma = 0.55`` carry fp32 rounding (about 1e-8) into fp64 maps and gradients."""
    for name, code in ptx["fp64"].items():
        assert ".param .f32" not in code, f"{name} takes an fp32 scalar"
        assert "cvt.f64.f32" not in code, f"{name} widens an fp32 value"


def test_fp32_kernels_compute_in_fp32(ptx: dict[str, dict[str, str]]) -> None:
    """In fp32 kernels the fp64 scalars are converted once, not promoted into fp64 arithmetic."""
    for name, code in ptx["fp32"].items():
        assert "mul.f64" not in code and "fma.rn.f64" not in code and "div.rn.f64" not in code, name


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # bench/ (the checkout's tooling)
    print(json.dumps({"ptx": {dtype: _ptx(dtype) for dtype in ("fp32", "fp64")}, "usage": _usage()}))
