"""gainx: Guided Attention Inference Networks (GAIN / GAINext, CVPR 2018).

Quick use::

    import gainx
    scores, maps = gainx.attention_maps(model, images, "layer4", topk=3)
    objective = gainx.GAIN(model, "layer4", method="gainext")
    out = objective(images, labels, guide, has_guide); out.loss.backward()

The top-level names are imported on first use (PEP 562), so ``import gainx``
and torch-free parts such as :mod:`gainx.runtime` and ``gainx serve`` do not
import torch.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gainx.attention import attention_maps
    from gainx.losses import GAIN, GAINOutput

__version__ = "0.1.0"
__all__ = ["GAIN", "GAINOutput", "attention_maps", "__version__"]
_LAZY = {"attention_maps": "gainx.attention", "GAIN": "gainx.losses", "GAINOutput": "gainx.losses"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'gainx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
