"""Compile the CUDA sources (csrc/ops/cuda/*.cu) with nvcc against torch's
headers, so CI catches CUDA compile errors on machines without a GPU. Skipped
only when nvcc is not on PATH. GAINX_NVCC_ARCH picks the target (sm_80)."""

from __future__ import annotations

import os
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
        *cpp_extension.COMMON_NVCC_FLAGS,
        *includes,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=230)
    assert res.returncode == 0, f"nvcc failed on {source.name}:\n{res.stderr[-6000:]}"
    assert (tmp_path / "kernel.o").stat().st_size > 0
