"""ONNX export parity on a zoo of torchvision, timm and Hugging Face models (random weights, no download).

    python -m bench.export_zoo [--size 64] [-k NAME]

Each model is built from its spec (:func:`gainx.models.build_model`), its
batch-norm statistics are set from random images (fresh statistics leave some
models' logits near 1e-19 and the maps flat), and it is exported with
:func:`gainx.export.export_onnx` at its target layer (the default one unless
the list names one: Swin stages, ViT blocks). One JSON line per
model: the target layer, whether H, W stayed dynamic, the largest ONNX Runtime
vs PyTorch errors of the built-in verification (scores: absolute and relative
to the largest score; maps: absolute, and where PyTorch's float32 maps are
themselves more than 1e-4 from float64 ones, ONNX's and PyTorch's distance to
those), the file size against the parameters' size, and the export time. A
failed export prints its error instead.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from gainx.export import export_onnx, onnx_export
from gainx.models import build_model, default_target_layer

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class Row(NamedTuple):
    spec: str
    kwargs: dict
    layer: str | None  # None: the default one, gainx.models.default_target_layer
    output: str | None = None  # where the scores are in what the model returns (Hugging Face: "logits")


HF = "bench.export_zoo:hugging_face"
ZOO: list[Row] = [
    Row("torchvision.models:resnet18", {}, None),
    Row("torchvision.models:squeezenet1_1", {}, None),
    Row("torchvision.models:mobilenet_v3_small", {}, None),
    Row("torchvision.models:regnet_x_400mf", {}, None),
    Row("torchvision.models:efficientnet_b0", {}, None),
    Row("torchvision.models:convnext_tiny", {}, None),
    Row("torchvision.models:densenet121", {}, None),
    Row("torchvision.models:mnasnet0_5", {}, None),
    Row("torchvision.models:shufflenet_v2_x0_5", {}, None),
    Row("torchvision.models:swin_t", {}, "features"),  # channels-last (B, h, w, C)
    Row("timm:efficientnet_b0", {}, None),
    Row("timm:regnetx_002", {}, None),
    Row("timm:resnet10t", {}, None),
    Row("timm:mobilenetv3_small_050", {}, None),
    Row("timm:convnext_atto", {}, None),
    Row("timm:swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 4}, "layers"),
    Row("timm:vit_tiny_patch16_224", {"img_size": 64, "global_pool": "avg"}, "blocks"),  # tokens, averaged
    Row(HF, {"arch": "ResNetForImageClassification"}, "resnet.encoder.stages.3", "logits"),
    Row(HF, {"arch": "ConvNextForImageClassification"}, "convnext.encoder.stages.3", "logits"),
    Row(HF, {"arch": "SwinForImageClassification", "image_size": 64, "window_size": 2}, "swin.layernorm", "logits"),
    Row(  # the class token reads the last block's output: explained at the block before it
        HF,
        {"arch": "ViTForImageClassification", "image_size": 64, "num_hidden_layers": 4},
        "vit.layers.2",
        "logits",
    ),
]


def hugging_face(arch: str, num_classes: int, **config: object) -> nn.Module:
    """``transformers.<arch>`` (an ``...ForImageClassification`` class) with random weights; ``config``
    overrides its default configuration (e.g. ``image_size``)."""
    import transformers

    config_class = getattr(transformers, arch.replace("ForImageClassification", "Config"))
    return getattr(transformers, arch)(config_class(num_labels=num_classes, **config))


def normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def calibrated(spec: str, num_classes: int, size: int, model_kwargs: dict | None = None) -> nn.Module:
    """``spec`` with random weights and batch-norm statistics of random images, in eval mode."""
    torch.manual_seed(0)
    return calibrate(build_model(spec, num_classes, model_kwargs=model_kwargs), size)


def calibrate(model: nn.Module, size: int) -> nn.Module:
    """``model`` with O(1) activations, in eval mode: default linear init, batch-norm statistics of 8 random
    ``size`` x ``size`` images (fresh statistics leave some models' logits near 1e-19 and the maps flat)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(normalize(torch.rand(8, 3, size, size)))
    return model.eval()


def measure(row: Row, size: int, out: Path, num_classes: int = 5) -> dict:
    spec, kwargs, layer = row.spec, row.kwargs, row.layer
    model = calibrated(spec, num_classes, size, kwargs)
    layer = layer or default_target_layer(spec, model, (size, size))
    errors: dict[str, float] = {}
    scale: list[float] = []
    verify = onnx_export.verify_onnx

    def recording(data, model, layer, mean, std, cases, **kwargs):
        errors.update(verify(data, model, layer, mean, std, cases, **kwargs))
        with torch.no_grad():
            scale.append(max(float(model(normalize(c.images)).abs().max()) for c in cases))
        return errors

    onnx_export.verify_onnx = recording
    start = time.perf_counter()
    try:
        path = export_onnx(
            model, out, target_layer=layer, image_size=(size, size), mean=MEAN, std=STD, output=row.output
        )
    finally:
        onnx_export.verify_onnx = verify
    params = sum(t.numel() * t.element_size() for t in model.state_dict().values() if t.is_floating_point())
    from gainx.runtime import AttentionSession

    return {
        "model": spec,
        **({"model_kwargs": kwargs} if kwargs else {}),
        **({"output": row.output} if row.output else {}),
        "target_layer": layer,
        "dynamic_hw": AttentionSession(path).dynamic_hw,
        "scores_abs": errors["scores"],
        "scores_rel": errors["scores"] / max(1.0, scale[-1]),
        "attention_abs": errors["attention"],
        **{key: errors[key] for key in ("attention_fp64", "pytorch_fp64") if key in errors},
        "onnx_mb": round(path.stat().st_size / 2**20, 2),
        "params_mb": round(params / 2**20, 2),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("-k", default="", help="only models whose spec or keyword arguments contain this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for row in [z for z in ZOO if args.k in z.spec + json.dumps(z.kwargs)]:
            try:
                result = measure(row, args.size, Path(tmp) / "model.onnx")
            except Exception as exc:  # noqa: BLE001 - report and go on to the next model
                result = {"model": row.spec, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
