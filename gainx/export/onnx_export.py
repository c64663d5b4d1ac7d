"""``export_onnx``: a classifier (or a gainx checkpoint) -> a verified attention ONNX model.

The graph contract is documented in docs/export.md: inputs ``images``
float32 (N, 3, H, W) in [0, 1] and optional ``class_ids`` int64 (N, K)
(an overridable initializer holding a ``(1, topk)`` row of ``-1``: "the top-k
classes"); outputs ``scores`` (N, C), ``classes`` int64 (N, K), ``attention``
float32 (N, K, H, W) in [0, 1]; ``gainx.*`` metadata_props (JSON values).
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gainx._extras import require
from gainx.attention.outputs import OutputSelector, describe_output, pick_output
from gainx.export.errors import conversion_error, missing_onnx_op
from gainx.export.graph import AttentionGraph, build_attention_graph
from gainx.export.preflight import (
    accepts_other_sizes,
    check_differentiable,
    check_spatial_evidence,
    use_eager_attention,
)
from gainx.export.verify import (
    FP16_ATOL,
    FP32_ATOL,
    ExportVerificationError,
    VerifyCase,
    default_cases,
    load_verify_images,
    verify_onnx,
)
from gainx.io import atomic_open
from gainx.runtime import MIN_IMAGE_SIDE

INPUT_NAMES = ["images", "class_ids"]
OUTPUT_NAMES = ["scores", "classes", "attention"]
log = logging.getLogger(__name__)


def _resolve(
    model_or_checkpoint: nn.Module | str | Path,
    overrides: dict[str, Any],
    spec: str | None = None,
    trust_model_code: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model and its metadata: checkpoint meta, overridden by non-None arguments."""
    if isinstance(model_or_checkpoint, nn.Module):
        model, meta = model_or_checkpoint, {"arch": None, "multilabel": False}
    else:
        from gainx.models import load_model

        model, meta = load_model(model_or_checkpoint, model=spec, trust_model_code=trust_model_code)
    meta = {**meta, **{k: v for k, v in overrides.items() if v is not None}}
    missing = [k for k in ("target_layer", "image_size", "mean", "std") if meta.get(k) is None]
    if missing:
        raise ValueError(f"export_onnx needs {missing} (given as arguments or stored in the checkpoint)")
    return model, meta


def _check_args(meta: dict[str, Any], topk: int) -> None:
    """Refuse an image size, mean, std or top-k that no model could be exported with (before the model runs)."""
    if len(meta["image_size"]) != 2 or min(meta["image_size"]) < MIN_IMAGE_SIDE:
        raise ValueError(f"image_size must be (H, W) with H, W >= {MIN_IMAGE_SIDE}, got {meta['image_size']}")
    for name in ("mean", "std"):
        if len(meta[name]) != 3:
            raise ValueError(f"{name} must have 3 values (RGB), got {meta[name]}")
    if min(meta["std"]) <= 0:
        raise ValueError(f"std must be positive, got {meta['std']}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")


def _check_classes(meta: dict[str, Any], num_classes: int, topk: int) -> None:
    """Refuse class names or a top-k that do not fit the model's ``num_classes`` scores."""
    if len(meta["classes"]) != num_classes:
        raise ValueError(f"{len(meta['classes'])} class names for a model with {num_classes} outputs")
    if not 1 <= topk <= num_classes:
        raise ValueError(f"topk must be in [1, {num_classes}], got {topk}")


def _torch_export(
    graph: AttentionGraph, image_size: Sequence[int], num_classes: int, opset: int | None, dynamic_hw: bool
) -> Any:
    from torch.export import Dim

    batch = Dim("batch", min=1)
    spatial = {2: Dim("height", min=MIN_IMAGE_SIDE), 3: Dim("width", min=MIN_IMAGE_SIDE)} if dynamic_hw else {}
    images = torch.rand(3, 3, *image_size)
    class_ids = torch.full((3, min(2, num_classes)), -1, dtype=torch.long)
    dynamic_shapes = {"images": {0: batch, **spatial}, "class_ids": {0: batch, 1: Dim("k", min=1, max=num_classes)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.onnx.export(
            graph,
            (images, class_ids),
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            opset_version=opset,
            verbose=False,
        )


def _check_opset(proto: Any, opset: int | None) -> None:
    """Refuse a graph whose ONNX opset is not the one asked for (torch.onnx writes its own opset when its
    version converter fails, and only logs the failure)."""
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and written != opset:
        raise ValueError(
            f"ONNX opset {opset} was asked for, but torch.onnx could only write opset {written} (its conversion to "
            f"{opset} failed); export with --opset {written}, or without --opset"
        )


def _dynamic_hw(proto: Any) -> bool:
    """Whether the graph input ``images`` kept symbolic H, W (torch.export specializes sizes the model fixes)."""
    dims = next(i for i in proto.graph.input if i.name == "images").type.tensor_type.shape.dim
    return all(not d.HasField("dim_value") for d in dims[2:])


def _finalize(proto: Any, topk: int, metadata: dict[str, Any]) -> bytes:
    """Make ``class_ids`` optional (default ``-1`` row) and attach the metadata."""
    from onnx import numpy_helper

    proto.graph.initializer.append(numpy_helper.from_array(np.full((1, topk), -1, dtype=np.int64), "class_ids"))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"gainx.{key}", json.dumps(value)
    return proto.SerializeToString()


def export_onnx(
    model_or_checkpoint: nn.Module | str | Path,
    out: str | Path,
    *,
    target_layer: str | None = None,
    classes: Sequence[str] | None = None,
    topk: int = 1,
    image_size: Sequence[int] | None = None,
    opset: int | None = None,
    fp16: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    verify: bool = True,
    verify_images: str | Path | None = None,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    output: OutputSelector = None,
    arch: str | None = None,
    model_spec: str | None = None,
    trust_model_code: bool = False,
) -> Path:
    """Export an attention-producing classifier to ``out`` (atomic) and return the path.

    ``model_or_checkpoint``: an ``nn.Module`` (then ``target_layer``,
    ``image_size``, ``mean`` and ``std`` are required) or a gainx checkpoint
    path (its metadata fills what is not given). Batch size is dynamic; H, W
    are dynamic when the model traces with symbolic sizes and reads no input
    size but the batch after the target layer (:mod:`gainx.export.split`),
    else fixed to ``image_size``; an export with dynamic H, W that fails verification is
    redone for ``image_size`` only. With ``verify`` (default) the model is
    checked against PyTorch on random images and, with ``verify_images`` (a
    folder), on the user's images (see :mod:`gainx.export.verify`: maps within
    1e-4 of PyTorch's, or of float64 maps where float32 PyTorch is itself
    inexact, scores within 1e-4 relative to the largest score; 5e-2 for fp16) and
    :class:`ExportVerificationError` is raised without writing anything when it
    fails. ``ValueError`` names the cause when the model cannot be split,
    differentiated or converted. ``reshape_transform`` maps the target layer's
    output to ``(N, C, h, w)`` as in :func:`gainx.attention_maps` (``None``:
    read channels-last maps and ViT tokens off the shape); it must be
    traceable (permute, reshape, slicing), and a transform with sizes fixed at
    ``image_size`` gives a fixed-size export. ``output`` picks the scores out of
    what the model returns (a key, attribute, index or callable, as in
    :func:`gainx.attention_maps`; e.g. ``"logits"`` for Hugging Face
    ``...ForImageClassification`` models); the exported graph returns those scores.
    ``arch`` is recorded as ``gainx.arch`` (a checkpoint's own by default;
    ``gainx export --model SPEC`` records the spec). ``model_spec`` (the checkpoint's model spec, given by the
    caller) and ``trust_model_code`` allow rebuilding a checkpoint whose model spec is not stock, as ``model``
    and ``trust_model_code`` of :func:`gainx.models.load_model` do.
    """

    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module, extra="export", feature="ONNX export")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"out {out} is a directory; give the path of the .onnx file to write")
    overrides = {
        "arch": arch,
        "target_layer": target_layer,
        "classes": list(classes) if classes is not None else None,
        "image_size": list(image_size) if image_size is not None else None,
        "mean": list(mean) if mean is not None else None,
        "std": list(std) if std is not None else None,
    }
    model, meta = _resolve(model_or_checkpoint, overrides, model_spec, trust_model_code)
    _check_args(meta, topk)
    model = copy.deepcopy(model).cpu().eval()  # the caller's module keeps its device and mode
    use_eager_attention(model)
    layer = meta["target_layer"]  # the user's name, recorded in the metadata
    if output is not None:
        model = ScoresOf(model, output)
        layer = f"{ScoresOf.INNER}.{layer}"  # its name inside the wrapper that is traced and verified
    size = [int(v) for v in meta["image_size"]]
    example = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = model(example)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise ValueError(
            f"the model must return (N, num_classes) scores, got {describe_output(scores)}; pass output= (a key, "
            "attribute, index or callable; gainx export --output) to pick them, e.g. output='logits' for Hugging "
            "Face models"
        )
    num_classes = scores.shape[1]
    meta.setdefault("classes", [str(i) for i in range(num_classes)])
    _check_classes(meta, num_classes, topk)
    dtype = torch.float16 if fp16 else torch.float32
    log.info("checking that the attention at %s is differentiable (%d classes, %dx%d input)", layer, num_classes, *size)
    check_differentiable(model, layer, example)
    graph = build_attention_graph(
        model, layer, num_classes, meta["mean"], meta["std"], example, dtype, reshape_transform
    )
    check_spatial_evidence(graph, example, layer)
    own = (
        []
        if verify_images is None
        else [VerifyCase(f"images of {verify_images}", load_verify_images(verify_images, size), None)]
    )
    for dynamic_hw in [True, False] if accepts_other_sizes(model, size) and not graph.fixed_size else [False]:
        log.info(
            "tracing the attention graph into ONNX (%s)", "any H, W" if dynamic_hw else f"{size[0]}x{size[1]} only"
        )
        try:
            program = _torch_export(graph, size, num_classes, opset, dynamic_hw)
        except Exception as exc:
            if dynamic_hw and missing_onnx_op(exc) is None:  # fall back to the fixed size
                log.info("dynamic H, W not exportable (%s); exporting for %s only", type(exc).__name__, size)
                continue
            raise conversion_error(exc) from exc
        _check_opset(program.model_proto, opset)
        if dynamic_hw and not _dynamic_hw(program.model_proto):
            log.info("torch.export fixed H, W (sizes baked into the model); the export is for %s only", size)
            dynamic_hw = False
        metadata = _metadata(meta, size, topk, fp16, dynamic_hw)
        data = _finalize(program.model_proto, topk, metadata)
        if not verify:
            break
        cases = default_cases(size, num_classes, topk, dynamic_hw) + own
        on = "; ".join(f"{c.name} ({c.images.shape[0]} at {c.images.shape[2]}x{c.images.shape[3]})" for c in cases)
        log.info("verifying with ONNX Runtime against PyTorch on %s", on)
        try:
            errors = verify_onnx(
                data,
                model,
                layer,
                meta["mean"],
                meta["std"],
                cases,
                atol=FP16_ATOL if fp16 else FP32_ATOL,
                reshape_transform=graph.transform,
            )
        except ExportVerificationError as exc:
            if not dynamic_hw:
                raise
            log.warning("the export with dynamic H, W failed verification (%s); exporting for %s only", exc, size)
            continue
        log.info(
            "verified: max score difference %.2g, max map difference %.2g, on %s",
            errors["scores"],
            errors["attention"],
            on,
        )
        break
    with atomic_open(out, "wb") as fh:
        fh.write(data)
    return out


class ScoresOf(nn.Module):
    """``model`` followed by the selection of its scores (:func:`gainx.attention.outputs.pick_output`).

    The wrapped model's layers are named ``inner.<name>``.
    """

    INNER = "inner"

    def __init__(self, model: nn.Module, output: OutputSelector) -> None:
        super().__init__()
        self.inner = model
        self.output = output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return pick_output(self.inner(images), self.output)


def _metadata(meta: dict[str, Any], size: list[int], topk: int, fp16: bool, dynamic_hw: bool) -> dict[str, Any]:
    from gainx import __version__

    return {
        "classes": list(meta["classes"]),
        "mean": list(meta["mean"]),
        "std": list(meta["std"]),
        "image_size": size,
        "topk": topk,
        "arch": meta.get("arch"),
        "target_layer": meta["target_layer"],
        "multilabel": bool(meta.get("multilabel", False)),
        "version": __version__,
        "fp16": fp16,
        "dynamic_hw": dynamic_hw,
    }
