"""The graph contract of an ONNX file, for ``GET /v1/model``: inputs, outputs, metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx


def _value_info(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    dims = [
        d.dim_param if d.HasField("dim_param") else d.dim_value if d.HasField("dim_value") else None
        for d in tensor.shape.dim
    ]
    return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": dims}


def _input_info(value: onnx.ValueInfoProto, defaults: set[str]) -> dict[str, Any]:
    return {**_value_info(value), "optional": value.name in defaults}


def graph_contract(path: str | Path) -> dict[str, Any]:
    """Inputs and outputs (name, dtype, shape with symbolic dims as names), opsets and metadata_props.

    An input that also has an initializer is optional (the initializer is its
    default). Only the graph structure is read (no external weight data).
    """
    model = onnx.load(str(path), load_external_data=False)
    defaults = {init.name for init in model.graph.initializer}
    return {
        "inputs": [_input_info(v, defaults) for v in model.graph.input],
        "outputs": [_value_info(v) for v in model.graph.output],
        "opsets": {op.domain or "ai.onnx": op.version for op in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "metadata": {prop.key: prop.value for prop in model.metadata_props},
    }
