"""ONNX export of torchvision and timm CNNs with heads the built-in archs lack (full zoo: bench/export_zoo.py).

A reduced timm ConvNeXt runs by default; the full-size models are marked ``slow`` (``pytest --runslow``).
The same code paths run by default on small models in tests/test_export_heads.py (convolution after the
layer) and tests/test_export_split.py (shape checks on body tensors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.export_zoo import MEAN, STD, calibrated, normalize
from gainx.attention import attention_maps
from gainx.export import export_onnx
from gainx.models import default_target_layer
from gainx.runtime import AttentionSession

SIZE, NUM_CLASSES, ATOL = 64, 5, 1e-4


SMALL_CONVNEXT = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}  # timm convnext_atto at reduced width and depth


@pytest.mark.parametrize(
    ("spec", "kwargs", "layer"),
    [
        ("timm:convnext_atto", SMALL_CONVNEXT, "stages"),  # traced head: pool, LayerNorm2d, linear
        pytest.param(  # the classifier is a convolution: no layer after it
            "torchvision.models:squeezenet1_1", {}, "classifier.2", marks=pytest.mark.slow
        ),
        pytest.param("torchvision.models:squeezenet1_1", {}, "features", marks=pytest.mark.slow),  # conv after it
        pytest.param("timm:efficientnet_b0", {}, "bn2", marks=pytest.mark.slow),  # BatchNormAct2d: shape checks
        pytest.param("timm:regnetx_002", {}, "s4", marks=pytest.mark.slow),
    ],
)
def test_zoo_export_parity(tmp_path: Path, spec: str, kwargs: dict, layer: str) -> None:
    if spec.startswith("timm:"):
        pytest.importorskip("timm")
    model = calibrated(spec, NUM_CLASSES, SIZE, kwargs)
    if layer == "classifier.2":
        assert default_target_layer(spec, model, (SIZE, SIZE)) == layer
    path = export_onnx(model, tmp_path / "m.onnx", target_layer=layer, image_size=(SIZE, SIZE), mean=MEAN, std=STD)
    session = AttentionSession(path)
    assert session.dynamic_hw
    images = torch.rand(2, 3, SIZE + 32, SIZE)
    ids = torch.tensor([[0, 3], [4, 1]])
    result = session.run(images, class_ids=ids)
    ref_scores, ref_maps = attention_maps(model, normalize(images), layer, classes=ids)
    np.testing.assert_allclose(result.scores, ref_scores.numpy(), rtol=0, atol=ATOL * max(1, ref_scores.abs().max()))
    np.testing.assert_allclose(result.attention, ref_maps.numpy(), rtol=0, atol=ATOL)
    assert (result.attention.reshape(4, -1).max(1) > 0.99).any()  # a class may have no positive evidence
