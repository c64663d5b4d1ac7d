"""ONNX export parity with PyTorch for six classifiers (linear and non-linear heads)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from bench.export_zoo import calibrate
from gainx.attention import attention_maps
from gainx.attention.head import find_linear_head
from gainx.export import ExportVerificationError, export_onnx, onnx_export
from gainx.export.graph import LinearHeadAttention, build_attention_graph
from gainx.export.split import split_at_layer
from gainx.export.verify import FP16_ATOL
from gainx.models import SmallCNN, build_model, default_target_layer
from gainx.runtime import AttentionSession

ARCHS = ["small_cnn", "resnet18", "vgg11_bn", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"]
LINEAR_HEADS = {"small_cnn", "resnet18", "efficientnet_b0"}
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIZE, NUM_CLASSES, TOPK = 64, 7, 2
ATOL = 1e-4


def _normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def calibrated(arch: str) -> nn.Module:
    """Random weights with O(1) activations: default linear init, batch-norm stats of random images.

    (torchvision's init leaves e.g. efficientnet's logits near 1e-19; maps
    would then be flat and the parity check meaningless.)
    """
    model = build_model(arch, NUM_CLASSES)
    if arch == "vgg11_bn":  # same head structure (7x7 pool, MLP), 256 wide instead of 4096: 100x smaller file
        model.classifier[0], model.classifier[3] = nn.Linear(512 * 7 * 7, 256), nn.Linear(256, 256)
        model.classifier[6] = nn.Linear(256, NUM_CLASSES)
    return calibrate(model, SIZE)


@pytest.fixture(scope="module", params=ARCHS)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    arch = request.param
    model = calibrated(arch)
    path = export_onnx(
        model,
        tmp_path_factory.mktemp(arch) / f"{arch}.onnx",
        target_layer=default_target_layer(arch),
        classes=[f"class{i}" for i in range(NUM_CLASSES)],
        topk=TOPK,
        image_size=(SIZE, SIZE),
        mean=MEAN,
        std=STD,
        verify=False,
    )  # the tests below are the verification
    return arch, model, AttentionSession(path)


def _reference(model: nn.Module, arch: str, images: torch.Tensor, classes: torch.Tensor):
    return attention_maps(model, _normalize(images), default_target_layer(arch), classes=classes)


def _assert_parity(arch: str, model: nn.Module, images: torch.Tensor, result, k: int) -> None:
    n, _, h, w = images.shape
    assert result.scores.shape == (n, NUM_CLASSES) and result.scores.dtype == np.float32
    assert result.classes.shape == (n, k) and result.classes.dtype == np.int64
    assert result.attention.shape == (n, k, h, w) and result.attention.dtype == np.float32
    ref_scores, ref_maps = _reference(model, arch, images, torch.from_numpy(result.classes))
    np.testing.assert_allclose(result.scores, ref_scores.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(result.attention, ref_maps.numpy(), rtol=0, atol=ATOL)
    assert result.attention.min() >= 0 and result.attention.max() <= 1
    assert (result.attention.reshape(n * k, -1).max(1) > 0.99).any()  # not all flat: the comparison means something


def test_split_reproduces_model(exported) -> None:
    arch, model, _ = exported
    body, head = split_at_layer(model, default_target_layer(arch))
    x = _normalize(torch.rand(2, 3, SIZE, SIZE + 16))
    with torch.no_grad():
        torch.testing.assert_close(head(body(x)), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_topk_parity(exported, batch: int) -> None:
    arch, model, session = exported
    images = torch.rand(batch, 3, SIZE, SIZE)
    result = session.run(images.numpy())
    ref_scores = _reference(model, arch, images, torch.from_numpy(result.classes))[0]
    best = ref_scores.topk(TOPK, dim=1).values
    np.testing.assert_allclose(np.take_along_axis(ref_scores.numpy(), result.classes, 1), best.numpy(), atol=ATOL)
    _assert_parity(arch, model, images, result, TOPK)


def test_class_ids_parity(exported) -> None:
    arch, model, session = exported
    images = torch.rand(3, 3, SIZE, SIZE)
    ids = torch.tensor([[0, 6, 6], [3, 1, 2], [5, 4, 0]])
    result = session.run(images, class_ids=ids)
    np.testing.assert_array_equal(result.classes, ids.numpy())
    _assert_parity(arch, model, images, result, 3)


def test_dynamic_image_size(exported) -> None:
    arch, model, session = exported
    assert session.dynamic_hw
    images = torch.rand(2, 3, SIZE + 32, SIZE)
    result = session.run(images, class_ids=torch.tensor([[1], [2]]))
    _assert_parity(arch, model, images, result, 1)


def test_checker_contract_and_metadata(exported) -> None:
    arch, _, session = exported
    proto = onnx.load(str(session.path))
    onnx.checker.check_model(proto)
    inputs = {v.name: v for v in proto.graph.input}
    assert list(inputs) == ["images", "class_ids"]
    assert [o.name for o in proto.graph.output] == ["scores", "classes", "attention"]
    images_dims = inputs["images"].type.tensor_type.shape.dim
    assert images_dims[0].dim_param and images_dims[1].dim_value == 3
    default = {i.name: i for i in proto.graph.initializer}["class_ids"]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(default), np.full((1, TOPK), -1))
    assert session.classes == [f"class{i}" for i in range(NUM_CLASSES)]
    assert (session.image_size, session.topk, session.target_layer) == ((SIZE, SIZE), TOPK, default_target_layer(arch))
    assert session.mean == MEAN and session.std == STD and session.multilabel is False
    assert session.metadata["version"]


@pytest.mark.parametrize("arch", ARCHS)
def test_head_path(arch: str) -> None:
    """GAP + linear heads use the analytic weights; the others a traced VJP."""
    model = (SmallCNN(NUM_CLASSES, width=8) if arch == "small_cnn" else build_model(arch, NUM_CLASSES)).eval()
    assert (find_linear_head(model, default_target_layer(arch)) is not None) == (arch in LINEAR_HEADS)


class _MixedHead(nn.Module):
    """Conv body; head with conv, BN, hardswish, adaptive 3x2 pool, MLP with dropout (all non-linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(
            nn.Conv2d(8, 8, 1),
            nn.BatchNorm2d(8),
            nn.Hardswish(),
            nn.AdaptiveAvgPool2d((3, 2)),
            nn.Flatten(),
            nn.Linear(48, 16),
            nn.Hardswish(),
            nn.Dropout(0.3),
            nn.Linear(16, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_traced_vjp_matches_autograd_odd_shapes(dtype: torch.dtype) -> None:
    """The eager AttentionGraph (traced head VJP) against autograd Grad-CAM: non-square, K=3, -1 ranks."""
    model = _MixedHead().eval().to(dtype)
    model.head[1].running_mean.uniform_(-0.5, 0.5)
    example = torch.rand(3, 3, 22, 13, dtype=dtype)
    graph = build_attention_graph(model, "body", NUM_CLASSES, MEAN, STD, example, dtype)
    assert not isinstance(graph.head_attention, LinearHeadAttention)
    images = torch.rand(5, 3, 30, 17)  # another size than the traced one
    ids = torch.tensor([[0, -1, 6]] * 5)
    with torch.no_grad():
        scores, classes, maps = graph(images, ids)
    ref_scores, ref_maps = attention_maps(model, _normalize(images).to(dtype), "body", classes=classes)
    assert torch.equal(classes[:, 0], torch.zeros(5, dtype=torch.long))
    assert torch.equal(classes[:, 1], ref_scores.topk(3, dim=1).indices[:, 1])  # -1 in column j: rank j
    tol = 1e-5 if dtype == torch.float32 else 2e-6  # outputs are float32 (the ONNX interface)
    torch.testing.assert_close(scores, ref_scores.float(), rtol=0, atol=tol)
    torch.testing.assert_close(maps, ref_maps.float(), rtol=0, atol=tol)
    assert (maps.flatten(2).amax(-1) > 0.99).any()


def test_refuses_to_write_when_verification_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = onnx_export.build_attention_graph

    def broken(*args, **kwargs):
        graph = build(*args, **kwargs)
        graph.mean += 0.05  # the exported graph normalizes differently from the model
        return graph

    monkeypatch.setattr(onnx_export, "build_attention_graph", broken)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(ExportVerificationError, match="differ from PyTorch"):
        export_onnx(SmallCNN(3, width=8), out, target_layer="features", image_size=(32, 32), mean=MEAN, std=STD)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_bad_arguments() -> None:
    model = SmallCNN(3, width=8)
    with pytest.raises(ValueError, match="needs \\['image_size', 'mean', 'std'\\]"):
        export_onnx(model, "unused.onnx", target_layer="features")
    with pytest.raises(ValueError, match="topk must be in \\[1, 3\\]"):
        export_onnx(model, "unused.onnx", target_layer="features", image_size=(32, 32), mean=MEAN, std=STD, topk=4)
    with pytest.raises(ValueError, match="2 class names for a model with 3 outputs"):
        export_onnx(
            model, "unused.onnx", target_layer="features", image_size=(32, 32), mean=MEAN, std=STD, classes=["a", "b"]
        )


class _Tripwire(nn.Module):
    """A model that must not run: arguments are checked first."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model ran")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": (0, 32)}, r"^image_size must be \(H, W\) with H, W >= 8, got \[0, 32\]$"),
        ({"image_size": (32, 32, 3)}, r"^image_size must be \(H, W\) with H, W >= 8, got \[32, 32, 3\]$"),
        ({"mean": [0.5, 0.5]}, r"^mean must have 3 values \(RGB\), got \[0\.5, 0\.5\]$"),
        ({"std": [0.2, 0.0, 0.2]}, r"^std must be positive, got \[0\.2, 0\.0, 0\.2\]$"),
        ({"topk": 0}, r"^topk must be >= 1, got 0$"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_runs(kwargs: dict, message: str) -> None:
    args = {"target_layer": "features", "image_size": (32, 32), "mean": MEAN, "std": STD, **kwargs}
    with pytest.raises(ValueError, match=message):
        export_onnx(_Tripwire(), "unused.onnx", **args)


def test_out_naming_a_directory_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"^out {re.escape(str(tmp_path))} is a directory; give the path of the "):
        export_onnx(_Tripwire(), tmp_path, target_layer="features", image_size=(32, 32), mean=MEAN, std=STD)
    assert list(tmp_path.iterdir()) == []


class _FlattenHead(nn.Module):
    """A head with the feature size baked in (flatten -> linear): H, W cannot be dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 * 8 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.conv(x), 1))


def test_fixed_size_model_exports_static_hw(tmp_path: Path) -> None:
    model = _FlattenHead().eval()
    path = export_onnx(model, tmp_path / "fixed.onnx", target_layer="conv", image_size=(16, 12), mean=MEAN, std=STD)
    session = AttentionSession(path)
    assert not session.dynamic_hw and session.metadata["dynamic_hw"] is False
    images = torch.rand(3, 3, 16, 12)
    result = session.run(images, class_ids=torch.tensor([[0, 2]] * 3))
    ref_scores, ref_maps = attention_maps(model, _normalize(images), "conv", classes=torch.tensor([[0, 2]] * 3))
    np.testing.assert_allclose(result.scores, ref_scores.numpy(), atol=ATOL)
    np.testing.assert_allclose(result.attention, ref_maps.numpy(), atol=ATOL)
    with pytest.raises(ValueError, match="exported for 16x12 images"):
        session.run(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("kind", ["linear head", "traced VJP"])
def test_fp16_export(tmp_path: Path, kind: str) -> None:
    """Half-precision graph, float32 interface; within the documented fp16 tolerance of fp32 PyTorch."""
    if kind == "linear head":
        model, layer, size = SmallCNN(4, width=8).eval(), "features", (32, 24)
    else:
        model, layer, size = _FlattenHead().eval(), "conv", (16, 12)
    path = export_onnx(
        model, tmp_path / "half.onnx", target_layer=layer, image_size=size, mean=MEAN, std=STD, fp16=True
    )  # built-in verification at FP16_ATOL
    proto = onnx.load(str(path))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    session = AttentionSession(path)
    assert session.metadata["fp16"] is True
    images = torch.rand(2, 3, *size)
    result = session.run(images, class_ids=torch.tensor([[1], [2]]))
    ref_scores, ref_maps = attention_maps(model, _normalize(images), layer, classes=torch.tensor([[1], [2]]))
    assert result.attention.dtype == np.float32
    np.testing.assert_allclose(result.attention, ref_maps.numpy(), atol=FP16_ATOL)
    score_tol = FP16_ATOL * max(1.0, float(ref_scores.abs().max()))
    np.testing.assert_allclose(result.scores, ref_scores.numpy(), atol=score_tol)


@pytest.mark.parametrize("opset", [17, 18])
def test_the_written_opset_is_the_one_asked_for_or_an_error(tmp_path: Path, opset: int) -> None:
    """torch.onnx falls back to its own opset when converting to an older one fails: that is refused, by name."""
    torch.manual_seed(0)

    def export() -> Path:
        return export_onnx(
            SmallCNN(3, width=8),
            tmp_path / "m.onnx",
            target_layer="features",
            classes=["a", "b", "c"],
            image_size=(32, 32),
            mean=[0.5] * 3,
            std=[0.25] * 3,
            verify=False,
            opset=opset,
        )

    if opset == 17:  # onnx's version converter cannot turn an axes input back into an attribute here
        with pytest.raises(ValueError, match="opset 17 was asked for, but torch.onnx could only write opset 18"):
            export()
        assert not (tmp_path / "m.onnx").exists()  # nothing half-written
        return
    written = onnx.load(str(export())).opset_import
    assert [o.version for o in written if o.domain in ("", "ai.onnx")] == [opset]
