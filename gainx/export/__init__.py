"""ONNX export of attention-producing classifiers and its deployment material.

``export_onnx`` writes one standard ONNX graph returning scores, classes and
Grad-CAM attention maps (contract: docs/export.md); ``write_triton_repo``
lays out an NVIDIA Triton Inference Server model repository for it.
"""

from gainx.export.onnx_export import export_onnx
from gainx.export.verify import ExportVerificationError

__all__ = ["ExportVerificationError", "export_onnx"]
