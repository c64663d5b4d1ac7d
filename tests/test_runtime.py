"""AttentionSession: metadata, numpy/torch in and out, preprocessing, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gainx.data.decode import read_image
from gainx.data.transforms import resize_rgb
from gainx.export import export_onnx
from gainx.models import SmallCNN
from gainx.runtime import AttentionResult, AttentionSession

SIZE = (32, 40)
CLASSES = ["cat", "dog", "bird", "fish"]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> AttentionSession:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("rt") / "m.onnx"
    path = export_onnx(
        SmallCNN(len(CLASSES), width=8),
        out,
        target_layer="features",
        classes=CLASSES,
        topk=2,
        image_size=SIZE,
        mean=[0.5, 0.4, 0.3],
        std=[0.2, 0.25, 0.3],
        verify=False,
    )  # parity: test_export_onnx.py
    return AttentionSession(path)


def test_attributes(session: AttentionSession) -> None:
    assert session.classes == CLASSES and session.num_classes == 4
    assert session.image_size == SIZE and session.topk == 2
    assert session.mean == [0.5, 0.4, 0.3] and session.std == [0.2, 0.25, 0.3]
    assert session.target_layer == "features" and session.dynamic_hw
    assert session.providers == ["CPUExecutionProvider"]


def test_numpy_and_torch_outputs_agree(session: AttentionSession) -> None:
    images = torch.rand(3, 3, *SIZE)
    as_np = session.run(images.numpy())
    as_t = session.run(images, as_torch=True)
    assert isinstance(as_np, AttentionResult) and isinstance(as_np.attention, np.ndarray)
    assert isinstance(as_t.attention, torch.Tensor) and as_t.classes.dtype == torch.int64
    for a, b in zip(as_np, as_t):
        np.testing.assert_array_equal(a, b.numpy())
    assert as_np.classes.shape == (3, 2) and as_np.attention.shape == (3, 2, *SIZE)
    np.testing.assert_array_equal(as_np.classes, np.argsort(-as_np.scores, axis=1)[:, :2])


def test_class_ids_select_maps(session: AttentionSession) -> None:
    images = np.random.default_rng(0).random((2, 3, *SIZE), dtype=np.float32)
    top = session.run(images)
    given = session.run(images, class_ids=np.array([[3, top.classes[0, 0], 1], [0, 0, 2]], dtype=np.int32))
    assert given.classes.tolist() == [[3, top.classes[0, 0], 1], [0, 0, 2]]
    np.testing.assert_allclose(given.attention[0, 1], top.attention[0, 0], atol=1e-6)
    np.testing.assert_array_equal(given.attention[1, 0], given.attention[1, 1])


def test_preprocess(session: AttentionSession) -> None:
    image = Image.fromarray(np.full((50, 70, 4), (255, 0, 51, 255), dtype=np.uint8), "RGBA")
    x = session.preprocess(image)
    assert x.shape == (3, *SIZE) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)
    assert session.run(x[None]).attention.shape == (1, 2, *SIZE)
    with pytest.raises(TypeError, match="PIL image"):
        session.preprocess(x)


def test_preprocess_rescales_16_bit_grayscale_as_training_does(session: AttentionSession, tmp_path: Path) -> None:
    """A 16-bit grayscale PNG (mode I;16) gives the pixels of the training decode, not Pillow's clipped ones."""
    values = np.linspace(0, 65535, 50 * 70).round().astype(np.uint16).reshape(50, 70)
    Image.fromarray(values).save(tmp_path / "g16.png")
    image = Image.open(tmp_path / "g16.png")
    assert image.mode == "I;16"
    want = resize_rgb(read_image(tmp_path / "g16.png", "test"), SIZE).transpose(2, 0, 1) / np.float32(255)
    np.testing.assert_array_equal(session.preprocess(image), want)


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (np.zeros((3, 32, 40), np.float32), ValueError, "rank 4"),
        (np.zeros((1, 1, 32, 40), np.float32), ValueError, "3 \\(RGB\\) channels"),
        (np.zeros((1, 3, 32, 40), np.float64), TypeError, "float32.*float64"),
        (np.zeros((1, 3, 32, 40), np.uint8), TypeError, "float32.*uint8"),
        (np.zeros((0, 3, 32, 40), np.float32), ValueError, "empty batch"),
        (np.full((1, 3, 32, 40), np.nan, np.float32), ValueError, "NaN"),
        (np.full((1, 3, 32, 40), np.inf, np.float32), ValueError, "infinite"),
        (np.zeros((1, 3, 2, 2), np.float32), ValueError, r"at least 8x8 .*got shape \(1, 3, 2, 2\)"),
        (np.zeros((1, 3, 32, 7), np.float32), ValueError, r"at least 8x8 .*got shape \(1, 3, 32, 7\)"),
        ([[0.0]], TypeError, "numpy array or a torch tensor"),
    ],
)
def test_bad_images(session: AttentionSession, images, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        session.run(images)


@pytest.mark.parametrize(
    ("ids", "error", "match"),
    [
        (np.array([[4]]), ValueError, "out of range \\[0, 4\\): \\[4\\]"),
        (np.array([[-1, 0]]), ValueError, "out of range.*\\[-1\\]"),
        (np.array([[0.0]]), TypeError, "integers"),
        (np.array([0, 1]), ValueError, "shape \\(N=1, K\\) with K in \\[1, 4\\]"),
        (np.array([[0], [1]]), ValueError, "shape \\(N=1, K\\) with K in \\[1, 4\\]"),
        (np.zeros((1, 0), np.int64), ValueError, "shape \\(N=1, K\\) with K in \\[1, 4\\]"),
        (np.zeros((1, 5), np.int64), ValueError, "shape \\(N=1, K\\) with K in \\[1, 4\\].*got \\(1, 5\\)"),
    ],
)
def test_bad_class_ids(session: AttentionSession, ids, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        session.run(np.zeros((1, 3, *SIZE), np.float32), class_ids=ids)


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        AttentionSession(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load ONNX model.*junk.onnx"):
        AttentionSession(junk)


def test_model_without_gainx_metadata(tmp_path: Path) -> None:
    model = torch.nn.Conv2d(3, 1, 1).eval()
    path = tmp_path / "plain.onnx"
    torch.onnx.export(model, (torch.rand(1, 3, 8, 8),), str(path), dynamo=True, input_names=["images"])
    with pytest.raises(ValueError, match="not a gainx attention model.*gainx.classes"):
        AttentionSession(path)
