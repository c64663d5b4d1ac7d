"""Export of heads beyond GAP + linear: convolutions, adaptive pools, graph size, and errors naming the cause."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from gainx.attention import attention_maps
from gainx.export import ExportVerificationError, export_onnx, onnx_export
from gainx.export.verify import load_verify_images
from gainx.models import SmallCNN
from gainx.runtime import AttentionSession

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
ATOL = 1e-4


def _normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _export(model: nn.Module, path: Path, layer: str, size: tuple[int, int], **kwargs) -> AttentionSession:
    return AttentionSession(export_onnx(model, path, target_layer=layer, image_size=size, mean=MEAN, std=STD, **kwargs))


def _assert_parity(session: AttentionSession, model: nn.Module, layer: str, images: torch.Tensor) -> None:
    ids = torch.tensor([[0, 2]] * images.shape[0])
    result = session.run(images, class_ids=ids)
    ref_scores, ref_maps = attention_maps(model, _normalize(images), layer, classes=ids)
    np.testing.assert_allclose(result.scores, ref_scores.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(result.attention, ref_maps.numpy(), rtol=0, atol=ATOL)
    assert (result.attention.reshape(-1, images.shape[-2] * images.shape[-1]).max(1) > 0.99).any()


class _ConvClassifier(nn.Module):
    """SqueezeNet-like: the classifier is a strided and a grouped convolution with BN, then a global pool."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),  # odd sizes leave rows the window never reaches
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 4, 1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def test_convolution_after_the_target_layer_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _ConvClassifier().eval()
    model.classifier[1].running_mean.uniform_(-0.5, 0.5)
    session = _export(model, tmp_path / "conv.onnx", "features", (30, 22))
    assert session.dynamic_hw
    _assert_parity(session, model, "features", torch.rand(3, 3, 30, 22))
    _assert_parity(session, model, "features", torch.rand(2, 3, 27, 41))  # odd feature sizes: padded gradient


class _PooledMLP(nn.Module):
    """``AdaptiveAvgPool2d(4)`` then an MLP: the pool's kernel depends on the feature size."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(128, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(self.features(x)))


def test_adaptive_pool_mlp_head_keeps_dynamic_sizes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _PooledMLP().eval()
    session = _export(model, tmp_path / "pool.onnx", "features", (32, 32))
    assert session.dynamic_hw
    _assert_parity(session, model, "features", torch.rand(2, 3, 44, 36))


def test_dynamic_export_failing_verification_is_redone_at_the_fixed_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verify = onnx_export.verify_onnx

    def refuse_other_sizes(data, model, layer, mean, std, cases, **kwargs):
        if any(case.name == "another image size" for case in cases):
            raise ExportVerificationError("another image size: ONNX attention differ from PyTorch by 0.5")
        return verify(data, model, layer, mean, std, cases, **kwargs)

    monkeypatch.setattr(onnx_export, "verify_onnx", refuse_other_sizes)
    model = SmallCNN(3, width=8).eval()
    session = _export(model, tmp_path / "fixed.onnx", "features", (32, 24))
    assert not session.dynamic_hw and session.metadata["dynamic_hw"] is False
    _assert_parity(session, model, "features", torch.rand(2, 3, 32, 24))


def test_linear_head_weight_is_stored_once(tmp_path: Path) -> None:
    model = SmallCNN(50, width=8).eval()
    path = export_onnx(model, tmp_path / "m.onnx", target_layer="features", image_size=(16, 16), mean=MEAN, std=STD)
    shapes = [tuple(t.dims) for t in onnx.load(str(path)).graph.initializer]
    assert shapes.count((50, 32)) == 1, shapes


class _Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).detach().amax((2, 3)))


class _DataDependent(_Detached):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if f.sum() > 0:
            f = 2 * f
        return self.fc(f.amax((2, 3)))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_Detached(), "do not depend differentiably on the output of 'features'.*choose a target layer"),
        (_DataDependent(), "control flow on tensor values .* write it with torch.where"),
    ],
)
def test_errors_say_the_cause_and_a_fix(tmp_path: Path, model: nn.Module, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        export_onnx(model, tmp_path / "m.onnx", target_layer="features", image_size=(16, 16), mean=MEAN, std=STD)
    assert not list(tmp_path.iterdir())


def test_verify_images_from_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, size in enumerate([(40, 30), (20, 20)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    images = load_verify_images(folder, (24, 16))
    assert images.shape == (2, 3, 24, 16) and 0 <= images.min() and images.max() <= 1
    seen: list[str] = []
    verify = onnx_export.verify_onnx

    def record(data, model, layer, mean, std, cases, **kwargs):
        seen.extend(case.name for case in cases)
        return verify(data, model, layer, mean, std, cases, **kwargs)

    monkeypatch.setattr(onnx_export, "verify_onnx", record)
    model = SmallCNN(3, width=8).eval()
    _export(model, tmp_path / "m.onnx", "features", (24, 16), verify_images=folder)
    assert f"images of {folder}" in seen
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        load_verify_images(tmp_path / "empty", (8, 8))
    with pytest.raises(FileNotFoundError, match="verification image folder not found"):
        load_verify_images(tmp_path / "missing", (8, 8))


def test_score_tolerance_is_relative_to_the_largest_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logits near 1e3: a float32 rounding difference of a few 1e-5 relative must pass; 1e-3 relative must not."""
    model = SmallCNN(3, width=8).eval()
    with torch.no_grad():
        model.fc.weight.mul_(1e3)
        model.fc.bias.fill_(1e3)
    _export(model, tmp_path / "big.onnx", "features", (16, 16))
    build = onnx_export.build_attention_graph

    def off_by_a_thousandth(*args, **kwargs):
        graph = build(*args, **kwargs)
        with torch.no_grad():
            graph.head_attention.linear.bias.mul_(1.001)  # about 1 in absolute, 1e-3 relative
        return graph

    monkeypatch.setattr(onnx_export, "build_attention_graph", off_by_a_thousandth)
    with pytest.raises(ExportVerificationError, match="scores differ from PyTorch"):
        _export(model, tmp_path / "off.onnx", "features", (16, 16))


class _InPlaceAfterTarget(nn.Module):
    """DenseNet-like: ``F.relu(features, inplace=True)`` right after the target layer."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.relu(self.features(x), inplace=True).mean((2, 3)))


def test_in_place_op_after_the_target_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _InPlaceAfterTarget().eval()
    session = _export(model, tmp_path / "inplace.onnx", "features", (16, 16))
    _assert_parity(session, model, "features", torch.rand(2, 3, 16, 16))
