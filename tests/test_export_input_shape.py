"""Export of models whose forward reads the input's shape after the target layer (EfficientNet-PyTorch's
``bs = inputs.size(0)`` ... ``x.view(bs, -1)``): ONNX Runtime parity with PyTorch at every layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bench.export_zoo import calibrate
from gainx.attention import attention_maps
from gainx.export import export_onnx
from gainx.export.split import input_size_is_fixed, split_at_layer
from gainx.runtime import AttentionSession

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIZE, NUM_CLASSES = 32, 4
ATOL = 1e-4


class BatchFromInput(nn.Module):
    """The EfficientNet-PyTorch pattern: the batch size read off the input, used after every block."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)) for _ in range(3)])
        self.conv_head = nn.Conv2d(8, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        bs = inputs.size(0)
        x = torch.relu(self.stem(inputs))
        for block in self.blocks:
            x = torch.relu(block(x))
        x = self.pool(torch.relu(self.conv_head(x)))
        return self.fc(x.view(bs, -1))


class WidthFromInput(BatchFromInput):
    """Reads the input's width too (``inputs.shape``): the export is valid at its own size only."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        n, _, _, w = inputs.shape
        x = self.pool(torch.relu(self.conv_head(torch.relu(self.stem(inputs)))))
        return self.fc(x.reshape(n, -1)) * (w / SIZE)


def _model(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return calibrate(cls(), SIZE)


def _normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _export(model: nn.Module, layer: str, path: Path, size: int = SIZE, verify: bool = False) -> AttentionSession:
    export_onnx(model, path, target_layer=layer, image_size=(size, size), mean=MEAN, std=STD, topk=2, verify=verify)
    return AttentionSession(path)


def _assert_parity(model: nn.Module, layer: str, session: AttentionSession, images: torch.Tensor) -> None:
    result = session.run(images.numpy())
    ref_scores, ref_maps = attention_maps(model, _normalize(images), layer, classes=torch.from_numpy(result.classes))
    np.testing.assert_allclose(result.scores, ref_scores.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(result.attention, ref_maps.numpy(), rtol=0, atol=ATOL)
    n, k = result.classes.shape
    assert (result.attention.reshape(n * k, -1).max(1) > 0.99).any()  # not all flat: the comparison means something


@pytest.mark.parametrize("layer", ["stem", "blocks.0", "blocks.2", "conv_head"])
def test_batch_size_read_from_the_input_splits_at_every_layer(layer: str) -> None:
    model = _model(BatchFromInput)
    body, head = split_at_layer(model, layer)  # no example needed: the batch size is F's
    assert not input_size_is_fixed(head)
    x = _normalize(torch.rand(3, 3, SIZE, SIZE + 8))
    torch.testing.assert_close(head(body(x)), model(x))


@pytest.mark.parametrize("layer", ["stem", "conv_head"])  # the whole network after it, or its pool and fc
def test_batch_size_read_from_the_input_exports_with_parity(layer: str, tmp_path: Path) -> None:
    model = _model(BatchFromInput)
    session = _export(model, layer, tmp_path / "model.onnx")
    assert session.dynamic_hw  # the batch size is a symbolic size, not a constant of the export
    for images in (torch.rand(1, 3, SIZE, SIZE), torch.rand(5, 3, SIZE, SIZE), torch.rand(2, 3, SIZE + 16, SIZE)):
        _assert_parity(model, layer, session, images)


def test_other_input_sizes_read_after_the_layer_fix_the_export_size(tmp_path: Path) -> None:
    model = _model(WidthFromInput)
    with pytest.raises(ValueError, match="read the model input .inputs. \\(in `.shape`\\)"):
        split_at_layer(model, "stem")  # W is needed, and without example images there is no size to fix
    body, head = split_at_layer(model, "stem", example=torch.rand(2, 3, SIZE, SIZE))
    assert input_size_is_fixed(head)

    session = _export(model, "conv_head", tmp_path / "model.onnx", verify=True)
    assert not session.dynamic_hw and session.image_size == (SIZE, SIZE)
    _assert_parity(model, "conv_head", session, torch.rand(3, 3, SIZE, SIZE))


# -- the real model: EfficientNet-Lite0 of efficientnet_lite_pytorch -----------------------------------------


def _lite0() -> nn.Module:
    efficientnet = pytest.importorskip("efficientnet_lite_pytorch")
    torch.manual_seed(0)
    return calibrate(efficientnet.EfficientNet.from_name("efficientnet-lite0", num_classes=NUM_CLASSES), 64)


@pytest.mark.parametrize("layer", ["_blocks.0", "_blocks.10", "_blocks.15", "_bn1"])
def test_efficientnet_lite0_splits_at_every_layer(layer: str) -> None:
    model = _lite0()
    body, head = split_at_layer(model, layer)
    x = _normalize(torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(head(body(x)), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # minutes on one core: the gradients of five blocks traced, exported and verified
def test_efficientnet_lite0_exports_at_a_block(tmp_path: Path) -> None:
    model = _lite0()
    session = _export(model, "_blocks.10", tmp_path / "lite0.onnx", size=64, verify=True)  # maps checked there
    assert session.dynamic_hw
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(session.run(images.numpy()).scores, model(_normalize(images)).numpy(), atol=ATOL)
