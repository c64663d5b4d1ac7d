"""Loads the compiled extension ``gainx._C`` (csrc/), which registers the
``torch.ops.gainx`` ops. When it is missing (not built, or built for another
torch), :func:`load` warns once and returns ``None``; callers then use the
eager references.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType

import torch


@functools.cache
def load() -> ModuleType | None:
    """Import ``gainx._C`` once; ``None`` (with one warning) if it cannot be loaded."""
    try:
        from gainx import _C
    except (ImportError, OSError) as exc:
        warnings.warn(
            f"gainx._C (the C++/CUDA extension) is not available ({exc}); "
            "gainx.ops falls back to the eager PyTorch implementation. "
            "Build it with `pip install .` to use the fast kernels.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return _C


def supports(device: torch.device) -> bool:
    """Whether the extension has kernels for tensors on ``device``."""
    ext = load()
    if ext is None:
        return False
    return device.type == "cpu" or (device.type == "cuda" and bool(ext.with_cuda))
