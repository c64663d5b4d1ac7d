"""gainx: Guided Attention Inference Networks (GAIN / GAINext, CVPR 2018).

Quick use::

    import gainx
    scores, maps = gainx.attention_maps(model, images, "layer4", topk=3)
    objective = gainx.GAIN(model, "layer4", method="gainext")
    out = objective(images, labels, guide, has_guide); out.loss.backward()

The names below are imported on first use (PEP 562), so ``import gainx.runtime``
or ``gainx serve`` do not load torch and the training code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gainx._lazy import lazy_names

__version__ = "0.1.0"

_LAZY = {"attention_maps": "gainx.attention", "GAIN": "gainx.losses", "GAINOutput": "gainx.losses"}
__all__ = ["GAIN", "GAINOutput", "__version__", "attention_maps"]

if TYPE_CHECKING:
    from gainx.attention import attention_maps
    from gainx.losses import GAIN, GAINOutput


__getattr__ = lazy_names(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
