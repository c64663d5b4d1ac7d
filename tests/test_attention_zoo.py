"""A zoo of torchvision, timm and Hugging Face models (random weights, built from configs, nothing downloaded).

For every (model, target layer) pair:

* ``gainx.attention_maps`` (layout read off the layer's shape, no reshape
  transform given) matches Captum's ``LayerGradCam`` for ``(B, C, h, w)``
  layers, and pytorch-grad-cam with its reshape transform for token and
  channels-last layers, within 1e-4 after the same bilinear upsampling and
  min-max normalization;
* one GAINext step (``gainx.GAIN(..., method="gainext")``) gives finite losses.

The pairs marked ``ci`` run by default (small, a few seconds each); the rest
of the zoo is marked ``slow`` and runs with ``pytest --runslow``
(tests/conftest.py). timm, transformers and captum come with the ``zoo`` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import gainx
from gainx.attention import select_scores
from gainx.ops import FLAT, upsample

NUM_CLASSES = 5
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Pair:
    name: str
    build: Callable[[], nn.Module]
    layer: str  # module path, or its tail after a "." (module names differ between library versions)
    size: int = 64
    output: str | None = None  # where the scores are (Hugging Face: "logits")
    reference: str = "captum"  # or "tokens" (B, 1 + hw, D) / "channels_last" (B, h, w, C) for pytorch-grad-cam
    prefix: int = 1  # class tokens before the patch tokens ("tokens" reference)
    ci: bool = False


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)

    return build


def _hf(model_cls: str, config_cls: str, **config) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        transformers = pytest.importorskip("transformers")
        cfg = getattr(transformers, config_cls)(num_labels=NUM_CLASSES, **config)
        return getattr(transformers, model_cls)(cfg)

    return build


def _tv(name: str, **kwargs) -> Callable[[], nn.Module]:
    return lambda: getattr(torchvision.models, name)(num_classes=NUM_CLASSES, **kwargs)


def _tv_vit() -> nn.Module:
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=NUM_CLASSES
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: every map would be flat
    return model


ZOO = [
    # torchvision
    Pair("tv-resnet18", _tv("resnet18"), "layer4", ci=True),
    Pair("tv-densenet121", _tv("densenet121"), "features.norm5"),  # in-place ReLU after the layer
    Pair("tv-mobilenet_v3_small", _tv("mobilenet_v3_small"), "features"),
    Pair("tv-efficientnet_b0", _tv("efficientnet_b0"), "features"),
    Pair("tv-squeezenet1_1", _tv("squeezenet1_1"), "features"),  # conv classifier
    Pair("tv-shufflenet_v2_x0_5", _tv("shufflenet_v2_x0_5"), "conv5"),
    Pair("tv-regnet_x_400mf", _tv("regnet_x_400mf"), "trunk_output"),
    Pair("tv-mnasnet0_5", _tv("mnasnet0_5"), "layers"),
    Pair("tv-convnext_tiny", _tv("convnext_tiny"), "features.7"),
    Pair("tv-swin_t", _tv("swin_t"), "features.7", size=128, reference="channels_last"),
    Pair("tv-vit-tiny", _tv_vit, "encoder.layers.encoder_layer_1.ln_1", size=32, reference="tokens", ci=True),
    # timm
    Pair("timm-resnet18", _timm("resnet18"), "layer4"),
    Pair("timm-efficientnet_b0", _timm("efficientnet_b0"), "bn2"),  # BatchNormAct2d
    Pair("timm-regnetx_002", _timm("regnetx_002"), "s4"),
    Pair("timm-mobilenetv3_small_050", _timm("mobilenetv3_small_050"), "blocks"),
    Pair("timm-convnext_atto", _timm("convnext_atto"), "stages.3", ci=True),
    Pair("timm-vit_tiny", _timm("vit_tiny_patch16_224", img_size=64, depth=2), "blocks.1.norm1", reference="tokens"),
    Pair(
        "timm-deit_tiny_distilled",  # two prefix tokens (class + distillation)
        _timm("deit_tiny_distilled_patch16_224", img_size=64, depth=2),
        "blocks.1.norm1",
        reference="tokens",
        prefix=2,
        ci=True,
    ),
    Pair(
        "timm-swin_tiny",
        _timm("swin_tiny_patch4_window7_224", img_size=64, window_size=4, depths=(1, 1, 1, 1)),
        "layers.3",
        reference="channels_last",
        ci=True,
    ),
    # Hugging Face
    Pair(
        "hf-vit",
        _hf(
            "ViTForImageClassification",
            "ViTConfig",
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        ),
        "1.layernorm_before",  # vit.layers.1 (transformers 5) or vit.encoder.layer.1 (4.x)
        size=32,
        output="logits",
        reference="tokens",
        ci=True,
    ),
    Pair(
        "hf-swin",
        _hf(
            "SwinForImageClassification",
            "SwinConfig",
            image_size=32,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[1, 2],
            window_size=4,
        ),
        "swin.layernorm",
        size=32,
        output="logits",
        reference="tokens",
        prefix=0,
        ci=True,
    ),
    Pair(
        "hf-resnet",
        _hf("ResNetForImageClassification", "ResNetConfig", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1]),
        "resnet.encoder.stages.1",
        output="logits",
        ci=True,
    ),
    Pair(
        "hf-convnext",
        _hf("ConvNextForImageClassification", "ConvNextConfig", num_stages=2, hidden_sizes=[16, 32], depths=[1, 1]),
        "convnext.encoder.stages.1",
        output="logits",
    ),
]


def _scores_of(model: nn.Module, output: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: model(x) if output is None else getattr(model(x), output)


def reference_maps(pair: Pair, model: nn.Module, x: torch.Tensor, cls: int) -> torch.Tensor:
    """Normalized ``(B, H, W)`` Grad-CAM maps of class ``cls`` from Captum or pytorch-grad-cam."""
    forward = _scores_of(model, pair.output)
    layer = model.get_submodule(layer_path(model, pair.layer))
    if pair.reference == "captum":
        attr = pytest.importorskip("captum.attr")
        raw = attr.LayerGradCam(forward, layer).attribute(x, target=cls, relu_attributions=True)[:, 0].detach()
        return normalized(raw, tuple(x.shape[-2:]))
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if pair.reference == "tokens":
        grid = int(round((model_tokens(model, layer, x) - pair.prefix) ** 0.5))
        transform = lambda t: t[:, pair.prefix :].reshape(t.shape[0], grid, grid, t.shape[2]).permute(0, 3, 1, 2)
    else:
        transform = lambda t: t.permute(0, 3, 1, 2)
    with pgc.GradCAM(_Scores(model, pair.output), target_layers=[layer], reshape_transform=transform) as cam:
        return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(cls)] * x.shape[0]))


class _Scores(nn.Module):
    """The scores tensor of a model that returns an output object (pytorch-grad-cam indexes the output)."""

    def __init__(self, model: nn.Module, output: str | None) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _scores_of(self.model, self.output)(images)


def layer_path(model: nn.Module, layer: str) -> str:
    """``layer`` itself if it is a module path of ``model``, else the last path ending in ``"." + layer``."""
    names = [n for n, _ in model.named_modules()]
    found = [n for n in names if n == layer] or [n for n in names if n.endswith("." + layer)]
    assert found, f"no module {layer!r} in {type(model).__name__}"
    return found[-1]


def model_tokens(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> int:
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(n=o.shape[1]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen["n"]


def normalized(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsampled, min-max normalized maps (zeros for a flat map)."""
    up = upsample(raw.float(), size)
    lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
    flat = (hi - lo) <= FLAT * hi.abs()
    return torch.where(flat, 0.0, (up - lo) / torch.where(flat, 1.0, hi - lo))


def check_pair(pair: Pair) -> float:
    """Max |gainx - reference| over 2 images x their top-3 classes; runs one GAINext step. Returns the difference.

    A map that is ReLU-zero everywhere (no positive evidence, common with
    random weights) is zeros in both; at least half of the maps must be non-flat.
    """
    torch.manual_seed(0)
    model = pair.build().eval()
    layer = layer_path(model, pair.layer)
    x = torch.randn(2, 3, pair.size, pair.size)
    worst, defined = 0.0, 0
    with torch.no_grad():
        top = select_scores(model(x), pair.output)[0].topk(3).indices.tolist()
    for cls in top:
        _, maps = gainx.attention_maps(model, x, layer, classes=[[cls], [cls]], output=pair.output)
        ref = reference_maps(pair, model, x, cls)
        defined += int((ref.amax((1, 2)) > 0.99).sum())
        worst = max(worst, float((maps[:, 0] - ref).abs().max()))
    assert defined >= 3, f"{pair.name}: only {defined} of 6 reference maps are not flat"
    assert worst <= TOLERANCE, f"{pair.name}: max difference {worst:.2e} to the reference"
    gain_step(pair, model, layer, x)
    return worst


def gain_step(pair: Pair, model: nn.Module, layer: str, x: torch.Tensor) -> None:
    model.train()
    gain = gainx.GAIN(model, layer, method="gainext", output=pair.output)
    labels = F.one_hot(torch.tensor([1, 4]), NUM_CLASSES).float()
    guide = (torch.rand(2, NUM_CLASSES, *x.shape[-2:]) > 0.5).to(torch.uint8)
    out = gain(x, labels, guide, torch.tensor([True, True]))
    losses = {"loss": out.loss, "loss_cl": out.loss_cl, "loss_am": out.loss_am, "loss_e": out.loss_e}
    assert all(torch.isfinite(v) for v in losses.values()), f"{pair.name}: {losses}"
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("pair", [p for p in ZOO if p.ci], ids=lambda p: p.name)
def test_zoo_ci(pair):
    print(f"{pair.name} {pair.layer}: max difference {check_pair(pair):.2e}")


@pytest.mark.slow
@pytest.mark.parametrize("pair", [p for p in ZOO if not p.ci], ids=lambda p: p.name)
def test_zoo_full(pair):
    print(f"{pair.name} {pair.layer}: max difference {check_pair(pair):.2e}")


def test_zoo_size():
    assert len(ZOO) >= 20 and len({p.name for p in ZOO}) == len(ZOO)
