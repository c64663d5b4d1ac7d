"""gainx: Guided Attention Inference Networks (GAIN / GAINext, CVPR 2018).

Quick use::

    import gainx
    scores, maps = gainx.attention_maps(model, images, "layer4", topk=3)
    objective = gainx.GAIN(model, "layer4", method="gainext")
    out = objective(images, labels, guide, has_guide); out.loss.backward()
"""

from gainx.attention import attention_maps
from gainx.losses import GAIN, GAINOutput

__version__ = "0.1.0"
__all__ = ["GAIN", "GAINOutput", "attention_maps", "__version__"]
