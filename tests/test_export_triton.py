"""Triton model repository: config.pbtxt parsed with tritonclient's protobuf, checked against the ONNX model."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from gainx.export import export_onnx
from gainx.export.triton_repo import write_triton_repo
from gainx.models import SmallCNN

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (test extra)")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return export_onnx(
        SmallCNN(3, width=8),
        tmp_path_factory.mktemp("triton") / "m.onnx",
        target_layer="features",
        classes=CLASSES,
        topk=2,
        image_size=(32, 32),
        mean=[0.5] * 3,
        std=[0.25] * 3,
        verify=False,
    )


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def test_repository_layout_and_config(onnx_path: Path, tmp_path: Path) -> None:
    folder = write_triton_repo(
        onnx_path,
        tmp_path / "repo",
        model_name="gain",
        max_batch_size=16,
        preferred_batch_sizes=(8, 4),
        max_queue_delay_us=500,
    )
    assert folder == tmp_path / "repo" / "gain"
    assert (folder / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    assert (folder / "labels.txt").read_text().splitlines() == CLASSES
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == "gain" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500

    graph = onnx.load(str(onnx_path)).graph
    triton_type = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT64: mc.TYPE_INT64}
    initializers = {i.name for i in graph.initializer}
    onnx_inputs = [v for v in graph.input if v.name not in initializers]  # class_ids: overridable, not exposed
    for declared, values in ((config.input, onnx_inputs), (config.output, list(graph.output))):
        assert [t.name for t in declared] == [v.name for v in values]
        for t, v in zip(declared, values):
            assert t.data_type == triton_type[v.type.tensor_type.elem_type]
            assert list(t.dims) == _dims(v)[1:]  # batch dimension excluded
    assert [t.name for t in config.input] == ["images"]
    assert list(config.input[0].dims) == [3, -1, -1]
    outputs = {t.name: t for t in config.output}
    assert list(outputs["scores"].dims) == [3] and outputs["scores"].label_filename == "labels.txt"


def test_rejects_bad_settings(onnx_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model name"):
        write_triton_repo(onnx_path, tmp_path, model_name="bad name")
    with pytest.raises(ValueError, match="preferred sizes"):
        write_triton_repo(onnx_path, tmp_path, max_batch_size=4, preferred_batch_sizes=(8,))
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 1, 1).eval(), (torch.rand(1, 3, 8, 8),), str(plain), dynamo=True)
    with pytest.raises(ValueError, match="no gainx.classes metadata"):
        write_triton_repo(plain, tmp_path)
    assert not (tmp_path / "gainx_attention").exists()
