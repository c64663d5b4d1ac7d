"""Compile the attention-erase Triton kernels ahead of time for sm_90 (Triton's own ptxas, no GPU needed),
so CI catches kernels that the interpreter runs but the compiler rejects, and checks the PTX for precision
that the interpreter cannot show: under ``TRITON_INTERPRET=1`` a Python float stays a float64, while a
compiled kernel receives it as the type its signature declares.

The compile runs in a child process without ``TRITON_INTERPRET`` (the test session sets it before the
kernels are imported, which makes them interpreted functions)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest

KERNELS = (
    "_gradcam_partial_kernel",
    "_map_stats_kernel",
    "_erase_kernel",
    "_erase_backward_kernel",
    "_map_backward_kernel",
    "_gradcam_backward_kernel",
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
}
INDEX_POINTERS = ("index_ptr", "order_ptr", "offsets_ptr")
FLOAT_ARGS = ("eps", "sigma", "omega")  # the op passes these as Python floats, every other scalar as an int


def _ptx(dtype: str) -> dict[str, str]:
    """PTX of every kernel with ``dtype`` ("fp32" or "fp64") data pointers, its scalars typed as Triton's
    launcher types the op's arguments: by the kernel's annotation, else by the Python value passed."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction, mangle_type

    import gainx.ops.attention_erase_triton as kernels

    out = {}
    for name in KERNELS:
        kernel = getattr(kernels, name)
        assert isinstance(kernel, JITFunction), f"{name} is interpreted: TRITON_INTERPRET is set"
        signature, constexprs = {}, {}
        for i, (param, spec) in enumerate(zip(inspect.signature(kernel.fn).parameters, kernel.params)):
            if param in CONSTEXPRS:
                signature[param] = "constexpr"
                constexprs[(i,)] = CONSTEXPRS[param]
            elif param.endswith("_ptr"):
                signature[param] = "*i64" if param in INDEX_POINTERS else f"*{dtype}"
            else:
                signature[param] = spec.annotation_type or mangle_type(0.5 if param in FLOAT_ARGS else 7)
        compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32))
        out[name] = compiled.asm["ptx"]
    return out


@pytest.fixture(scope="module")
def ptx() -> dict[str, dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600, cwd=os.getcwd()
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_every_kernel_compiles_for_sm90(ptx: dict[str, dict[str, str]], dtype: str) -> None:
    assert sorted(ptx[dtype]) == sorted(KERNELS)
    for name, code in ptx[dtype].items():
        assert f".entry {name}" in code, name


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
    print(json.dumps({dtype: _ptx(dtype) for dtype in ("fp32", "fp64")}))
