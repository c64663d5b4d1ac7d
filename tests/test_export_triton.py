"""Triton model repository: config.pbtxt parsed with tritonclient's protobuf, checked against the ONNX model."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from gainx.cli import main
from gainx.export import export_onnx
from gainx.export.triton_repo import triton_config, write_triton_repo
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
    config = _config_matching_graph(folder)
    assert config.name == "gain" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_AUTO, 1)]
    assert [t.name for t in config.input] == ["images"]
    assert list(config.input[0].dims) == [3, -1, -1]
    outputs = {t.name: t for t in config.output}
    assert list(outputs["scores"].dims) == [3] and outputs["scores"].label_filename == "labels.txt"


def _config_matching_graph(folder: Path) -> mc.ModelConfig:
    """``folder/config.pbtxt`` parsed, after checking that its tensors are the graph's of ``folder/1/model.onnx``:
    names in order, data types and dims without the batch dimension."""
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    triton_type = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT64: mc.TYPE_INT64}
    initializers = {i.name for i in graph.initializer}
    onnx_inputs = [v for v in graph.input if v.name not in initializers]  # class_ids: overridable, not exposed
    for declared, values in ((config.input, onnx_inputs), (config.output, list(graph.output))):
        assert [t.name for t in declared] == [v.name for v in values]
        for t, v in zip(declared, values):
            assert t.data_type == triton_type[v.type.tensor_type.elem_type]
            assert list(t.dims) == _dims(v)[1:]  # batch dimension excluded
    return config


@pytest.mark.parametrize("kind", ["auto", "cpu", "gpu"])
def test_instance_group_kind_and_count(onnx_path: Path, kind: str) -> None:
    config = text_format.Parse(triton_config(onnx_path, "m", instance_count=3, instance_kind=kind), mc.ModelConfig())
    (group,) = config.instance_group
    assert group.count == 3 and mc.ModelInstanceGroup.Kind.Name(group.kind) == f"KIND_{kind.upper()}"


def test_cli_writes_the_instance_group(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, repo = tmp_path / "m.onnx", tmp_path / "repo"
    argv = ["export", "--model", "small_cnn", "--random-weights", "--classes", *CLASSES, "--image-size", "32", "32"]
    argv += ["--no-verify", "--out", str(out), "--triton-repo", str(repo), "--triton-model-name", "cam"]
    argv += ["--triton-max-batch-size", "8", "--triton-instance-kind", "cpu", "--triton-instances", "2"]
    assert main(argv) == 0
    assert f"triton model: {repo / 'cam'}" in capsys.readouterr().out
    config = _config_matching_graph(repo / "cam")
    assert config.name == "cam" and config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]  # the default sizes up to the largest batch
    assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--triton-model-name", "my model"], "--triton-model-name 'my model' must use letters"),
        (["--triton-max-batch-size", "0"], "--triton-max-batch-size must be >= 1, got 0"),
        (["--triton-instances", "0"], "--triton-instances must be >= 1, got 0"),
    ],
)
def test_cli_checks_triton_flags_before_exporting(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    out, repo = tmp_path / "m.onnx", tmp_path / "repo"
    argv = ["export", "--model", "small_cnn", "--random-weights", "--classes", *CLASSES, "--image-size", "32", "32"]
    assert main([*argv, "--no-verify", "--out", str(out), "--triton-repo", str(repo), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not repo.exists()


def test_rejects_bad_settings(onnx_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_name 'bad name'"):
        write_triton_repo(onnx_path, tmp_path, model_name="bad name")
    with pytest.raises(ValueError, match=r"preferred_batch_sizes must lie in \[1, 4\]"):
        write_triton_repo(onnx_path, tmp_path, max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ValueError, match="instance_kind must be one of"):
        write_triton_repo(onnx_path, tmp_path, instance_kind="tpu")
    with pytest.raises(ValueError, match="instance_count must be >= 1"):
        write_triton_repo(onnx_path, tmp_path, instance_count=0)
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 1, 1).eval(), (torch.rand(1, 3, 8, 8),), str(plain), dynamo=True)
    with pytest.raises(ValueError, match="no gainx.classes metadata"):
        write_triton_repo(plain, tmp_path)
    assert not (tmp_path / "gainx_attention").exists()
