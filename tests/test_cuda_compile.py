"""Compile the CUDA sources (csrc/ops/cuda/*.cu) with nvcc against torch's
headers, so CI catches CUDA compile errors on machines without a GPU, and read
ptxas's resource report: no gainx kernel may spill registers to local memory.
Skipped only when nvcc is not on PATH. GAINX_NVCC_ARCH picks the target (sm_80)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[1]
CU_SOURCES = sorted((ROOT / "csrc" / "ops" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc")


def test_there_are_cuda_sources():
    assert CU_SOURCES, "no .cu files under csrc/ops/cuda"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", CU_SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles(source, tmp_path):
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    cmd = [
        NVCC,
        "-c",
        str(source),
        "-o",
        str(tmp_path / "kernel.o"),
        "-std=c++20",
        "-O1",
        "-DWITH_CUDA",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "-Xcompiler",
        "-fPIC",
        f"-arch={os.environ.get('GAINX_NVCC_ARCH', 'sm_80')}",
        "-Xptxas",
        "-v",
        *cpp_extension.COMMON_NVCC_FLAGS,
        *includes,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"nvcc failed on {source.name}:\n{res.stderr[-6000:]}"
    assert (tmp_path / "kernel.o").stat().st_size > 0
    spills = _spills(res.stdout + res.stderr)
    assert spills, f"ptxas reported no gainx kernel for {source.name}"
    assert not {name: n for name, n in spills.items() if n}, f"register spills (bytes) in {source.name}: {spills}"


def _spills(ptxas_log: str) -> dict[str, int]:
    """Spilled bytes (stores + loads) of each gainx entry function in ptxas's -v report."""
    entry = r"Function properties for (\S*gainx\S*)\s+\d+ bytes stack frame, "
    found = re.findall(entry + r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas_log)
    return {name: int(stores) + int(loads) for name, stores, loads in found}
