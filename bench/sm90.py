"""Ahead-of-time compilation of Triton kernels for sm_90 on any machine (Triton's own ptxas, no GPU needed):
PTX for precision checks and ptxas' register and spill counts for pruning tile configurations.

Must run in a process where ``TRITON_INTERPRET`` was unset when the kernels were imported (interpreted kernels
cannot be compiled); ``tests/test_triton_compile.py`` and ``bench/tune_attention_erase.py`` start such a child.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction, mangle_type

SM = 90
INDEX_POINTERS = ("index_ptr", "order_ptr", "offsets_ptr")
FLOAT_ARGS = ("eps", "sigma", "omega")  # the ops pass these as Python floats, every other scalar as an int


def compile_ptx(kernel: Any, dtype: str, constexprs: dict[str, Any], num_warps: int = 4) -> str:
    """PTX of ``kernel`` for sm_90 with ``dtype`` ("fp32", "fp64") data pointers and int64 index pointers; scalars
    typed as Triton's launcher types the ops' arguments: by the kernel's annotation, else by the Python value."""
    assert isinstance(kernel, JITFunction), f"{kernel} is interpreted: TRITON_INTERPRET is set"
    signature, constants = {}, {}
    for i, (param, spec) in enumerate(zip(inspect.signature(kernel.fn).parameters, kernel.params)):
        if param in constexprs:
            signature[param] = "constexpr"
            constants[(i,)] = constexprs[param]
        elif param.endswith("_ptr"):
            signature[param] = "*i64" if param in INDEX_POINTERS else f"*{dtype}"
        else:
            signature[param] = spec.annotation_type or mangle_type(0.5 if param in FLOAT_ARGS else 7)
    source = ASTSource(kernel, signature, constants)
    return triton.compile(source, target=GPUTarget("cuda", SM, 32), options={"num_warps": num_warps}).asm["ptx"]


def ptxas_usage(ptx: str) -> dict[str, int]:
    """``registers`` per thread and ``spill_bytes`` (spill stores) that ptxas reports for sm_90a."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        cmd = [get_ptxas(SM).path, f"-arch=sm_{SM}a", "-v", str(source), "-o", str(Path(folder) / "kernel.o")]
        report = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores", report)
    if registers is None or spills is None:
        raise RuntimeError(f"unexpected ptxas report: {report[-2000:]}")
    return {"registers": int(registers.group(1)), "spill_bytes": int(spills.group(1))}


FUSED_TILE_KERNELS = {"forward": "_map_erase_kernel", "backward": "_erase_backward_kernel"}


def fused_tile_usage(tile: Any, phase: str, dtype: str = "fp32") -> dict[str, int]:
    """ptxas usage of the fused attention-erase tile kernel of ``phase`` ("forward", "backward") at ``tile`` (a
    :class:`gainx.ops.attention_erase_fused.Tile`), for maps up to 15 x 15 (HP = WP = 16) and 3-channel images."""
    from gainx.ops import attention_erase_fused as fused

    constexprs = {
        **fused.tile_config(tile, 7, 7, 1 << 20),
        "HC": 8,
        "WC": 8,
        "KP": 4,
        "NEED_IMAGES": True,
        "NEED_MAP": True,
        "HAS_GE": True,
    }
    return ptxas_usage(compile_ptx(getattr(fused, FUSED_TILE_KERNELS[phase]), dtype, constexprs, tile.warps))
