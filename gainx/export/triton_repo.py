"""Lay out an NVIDIA Triton Inference Server model repository for an attention model.

``<repo>/<name>/config.pbtxt``, ``<repo>/<name>/1/model.onnx`` and
``<repo>/<name>/labels.txt`` (one class name a line, referenced by the
``scores`` output's ``label_filename``). The config uses the
``onnxruntime_onnx`` platform with dynamic batching; its dims exclude the batch
dimension (-1 for dynamic sizes). Only ``images`` is exposed as an input: the
optional ``class_ids`` is an ONNX overridable initializer, and Triton's ONNX
Runtime backend accepts such inputs only with ``max_batch_size: 0`` (no
batching), so served requests get the exported top-k classes. The instance
group runs ``instance_count`` copies of the model on the devices of
``instance_kind``: ``auto`` (Triton's choice: every GPU, else the CPU),
``cpu`` or ``gpu``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gainx._extras import require
from gainx.io import atomic_open, atomic_write_text

_TRITON_TYPES = {1: "TYPE_FP32", 7: "TYPE_INT64", 10: "TYPE_FP16", 11: "TYPE_FP64", 6: "TYPE_INT32"}
INSTANCE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def _io_specs(values: Sequence, skip: set[str]) -> list[tuple[str, str, list[int]]]:
    """``(name, triton type, dims without batch)`` of ONNX graph inputs/outputs."""
    specs = []
    for value in values:
        if value.name in skip:
            continue
        tensor = value.type.tensor_type
        if tensor.elem_type not in _TRITON_TYPES:
            raise ValueError(f"{value.name}: ONNX element type {tensor.elem_type} has no Triton equivalent here")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim][1:]
        specs.append((value.name, _TRITON_TYPES[tensor.elem_type], dims))
    return specs


def _tensor_block(specs: list[tuple[str, str, list[int]]], labels_for: str | None) -> str:
    entries = []
    for name, dtype, dims in specs:
        label = '\n    label_filename: "labels.txt"' if name == labels_for else ""
        entries.append(f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: {dims}{label}\n  }}')
    return ",\n".join(entries)


def check_triton_settings(
    model_name: str,
    max_batch_size: int = 32,
    preferred_batch_sizes: Sequence[int] | None = None,
    instance_count: int = 1,
    instance_kind: str = "auto",
    names: Mapping[str, str] | None = None,
) -> list[int]:
    """Refuse settings that :func:`triton_config` and :func:`write_triton_repo` cannot write; return the
    preferred batch sizes (given, or those of 4, 8 and 16 up to ``max_batch_size``; ``max_batch_size`` itself
    below 4).

    The errors name each setting by its entry in ``names`` (such as the command-line flag that gave it), else by
    its parameter name.
    """

    def called(setting: str) -> str:
        return (names or {}).get(setting, setting)

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_name):
        raise ValueError(f"{called('model_name')} {model_name!r} must use letters, digits, '_', '.', '-' only")
    if max_batch_size < 1:
        raise ValueError(f"{called('max_batch_size')} must be >= 1, got {max_batch_size}")
    if preferred_batch_sizes is None:
        preferred_batch_sizes = [b for b in (4, 8, 16) if b <= max_batch_size] or [max_batch_size]
    if any(not 1 <= b <= max_batch_size for b in preferred_batch_sizes):
        raise ValueError(
            f"{called('preferred_batch_sizes')} must lie in [1, {max_batch_size}] ({called('max_batch_size')}), "
            f"got {list(preferred_batch_sizes)}"
        )
    if instance_count < 1:
        raise ValueError(f"{called('instance_count')} must be >= 1, got {instance_count}")
    if instance_kind not in INSTANCE_KINDS:
        raise ValueError(f"{called('instance_kind')} must be one of {sorted(INSTANCE_KINDS)}, got {instance_kind!r}")
    return list(preferred_batch_sizes)


def triton_config(
    model: str | Path | Any,
    model_name: str,
    max_batch_size: int = 32,
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_delay_us: int = 2000,
    instance_count: int = 1,
    instance_kind: str = "auto",
) -> str:
    """The ``config.pbtxt`` text for an exported model: its path, or the loaded ``onnx.ModelProto``.

    ``preferred_batch_sizes`` defaults to those of 4, 8 and 16 up to ``max_batch_size`` (``max_batch_size``
    itself below 4). ``instance_kind`` is ``auto``, ``cpu`` or ``gpu`` (``KIND_AUTO``, ``KIND_CPU``,
    ``KIND_GPU``) and ``instance_count`` the model instances Triton runs on each device of that kind. The
    settings are checked first (:func:`check_triton_settings`).
    """
    preferred_batch_sizes = check_triton_settings(
        model_name, max_batch_size, preferred_batch_sizes, instance_count, instance_kind
    )
    if isinstance(model, (str, Path)):
        onnx = require("onnx", extra="export", feature="the Triton model repository")

        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    skip = {init.name for init in graph.initializer}
    return (
        f'name: "{model_name}"\n'
        f'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{_tensor_block(_io_specs(graph.input, skip), None)}\n]\n"
        f"output [\n{_tensor_block(_io_specs(graph.output, set()), 'scores')}\n]\n"
        f"dynamic_batching {{\n  preferred_batch_size: {sorted(set(preferred_batch_sizes))}\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
        f"instance_group [\n  {{\n    count: {instance_count}\n    kind: {INSTANCE_KINDS[instance_kind]}\n  }}\n]\n"
    )


def write_triton_repo(
    onnx_path: str | Path,
    repo: str | Path,
    model_name: str = "gainx_attention",
    max_batch_size: int = 32,
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_delay_us: int = 2000,
    instance_count: int = 1,
    instance_kind: str = "auto",
) -> Path:
    """Write ``<repo>/<model_name>/{config.pbtxt, labels.txt, 1/model.onnx}``; return the model folder.

    The class names come from the model's ``gainx.classes`` metadata; the other arguments are those of
    :func:`triton_config`, checked (:func:`check_triton_settings`) before the model is read.
    """
    onnx = require("onnx", extra="export", feature="the Triton model repository")

    onnx_path = Path(onnx_path)
    check_triton_settings(model_name, max_batch_size, preferred_batch_sizes, instance_count, instance_kind)
    model = onnx.load(str(onnx_path), load_external_data=False)  # parsed once, for the metadata and the config
    props = {p.key: p.value for p in model.metadata_props}
    if "gainx.classes" not in props:
        raise ValueError(f"{onnx_path} has no gainx.classes metadata; export it with gainx.export.export_onnx")
    config = triton_config(
        model, model_name, max_batch_size, preferred_batch_sizes, max_queue_delay_us, instance_count, instance_kind
    )
    folder = Path(repo) / model_name
    atomic_write_text(folder / "labels.txt", "".join(f"{name}\n" for name in json.loads(props["gainx.classes"])))
    with onnx_path.open("rb") as src, atomic_open(folder / "1" / "model.onnx", "wb") as dst:
        shutil.copyfileobj(src, dst)
    atomic_write_text(folder / "config.pbtxt", config)
    return folder
