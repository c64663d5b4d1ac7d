"""Build script: package metadata lives in pyproject.toml; this file adds the
C++/CUDA extension ``gainx._C`` (sources in csrc/).

The CPU kernels are always built (g++). The CUDA kernels are added when CUDA
is usable (``torch.cuda.is_available()`` and a CUDA toolkit, ``CUDA_HOME``) or
when ``FORCE_CUDA=1`` (target GPUs from ``TORCH_CUDA_ARCH_LIST``). ``MAX_JOBS``
sets the number of parallel compile jobs (ninja).
"""

from __future__ import annotations

import os
from glob import glob

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def _with_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def _extension() -> CppExtension:
    sources = ["csrc/gainx.cpp", *sorted(glob("csrc/ops/*.cpp")), *sorted(glob("csrc/ops/cpu/*.cpp"))]
    args: dict[str, list[str]] = {"cxx": ["-O3", "-g0", "-Wno-unknown-pragmas"]}
    if not _with_cuda():
        return CppExtension("gainx._C", sources, extra_compile_args=args)
    args["nvcc"] = ["-O3"]
    return CUDAExtension(
        "gainx._C",
        sources + sorted(glob("csrc/ops/cuda/*.cu")),
        define_macros=[("WITH_CUDA", None)],
        extra_compile_args=args,
    )


setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
