"""Generated benchmarks, written as CSV-manifest data sets (nothing is downloaded).

* :func:`write_decoy`: decoy digits (scikit-learn's bundled digits with a colour
  swatch that gives the label away in training, the "Decoy MNIST" idea);
* :func:`write_cooccur`: shapes on class-specific textured bands (co-occurring context);
* :func:`write_shapes`: one or two shapes on clutter, multi-label (localization).
"""

from gainx.data.synthetic.cooccur import write_cooccur
from gainx.data.synthetic.decoy import DECOY_COLORS, write_decoy
from gainx.data.synthetic.generator import SHAPES
from gainx.data.synthetic.shapes import write_shapes

__all__ = ["DECOY_COLORS", "SHAPES", "write_cooccur", "write_decoy", "write_shapes"]
