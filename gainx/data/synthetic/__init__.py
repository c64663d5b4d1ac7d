"""Generated benchmarks, written as CSV-manifest data sets (nothing is downloaded).

* :func:`write_decoy`: decoy digits (scikit-learn's bundled digits with a colour
  swatch that gives the label away in training, the "Decoy MNIST" idea);
* :func:`write_cooccur`: shapes on class-specific textured bands (co-occurring context);
* :func:`write_photos`: shapes on crops of real photographs, one photo per class
  (co-occurring context; the photos ship with scikit-image and scikit-learn);
* :func:`write_shapes`: one or two shapes on clutter, multi-label (localization).
"""

from gainx.data.synthetic.cooccur import write_cooccur
from gainx.data.synthetic.decoy import DECOY_COLORS, write_decoy
from gainx.data.synthetic.generator import SHAPES
from gainx.data.synthetic.photos import PHOTOS, write_photos
from gainx.data.synthetic.shapes import write_shapes

__all__ = ["DECOY_COLORS", "PHOTOS", "SHAPES", "write_cooccur", "write_decoy", "write_photos", "write_shapes"]
