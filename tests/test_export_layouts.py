"""Export of target layers that are not (N, C, h, w): channels-last maps, tokens with a class token, ViT limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from test_attention_zoo import ZOO, layer_path  # tests/ is on sys.path under pytest
from torch import nn

from gainx.attention import attention_maps
from gainx.attention.layout import TokensToMap, channels_last_to_first
from gainx.export import export_onnx
from gainx.runtime import AttentionSession

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
ATOL = 1e-4


def _normalize(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class _ChannelsLast(nn.Module):
    """Swin-like: a patch embedding read as (B, h, w, C), LayerNorm, mean over positions, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.embed(x).permute(0, 2, 3, 1)).mean((1, 2)))


class _Tokens(nn.Module):
    """ViT-like tokens (B, 1 + h w, D) with a class token; every token reaches the head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.mix = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.fc(self.mix(tokens).mean(1))


def _assert_parity(path: Path, model: nn.Module, layer: str, images: torch.Tensor, transform=None) -> None:
    ids = torch.tensor([[0, 2]] * images.shape[0])
    result = AttentionSession(path).run(images, class_ids=ids)
    ref_scores, ref_maps = attention_maps(model, _normalize(images), layer, classes=ids, reshape_transform=transform)
    np.testing.assert_allclose(result.scores, ref_scores.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(result.attention, ref_maps.numpy(), rtol=0, atol=ATOL)
    assert (result.attention.reshape(-1, images.shape[-2] * images.shape[-1]).max(1) > 0.99).any()


def test_channels_last_layer_is_read_from_its_shape(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _ChannelsLast().eval()
    path = export_onnx(model, tmp_path / "cl.onnx", target_layer="norm", image_size=(32, 24), mean=MEAN, std=STD)
    assert AttentionSession(path).dynamic_hw
    # a 12x10x8 output of 48x40 images also reads as 10x8 maps of 12 channels: the reference is told the layout
    _assert_parity(path, model, "norm", torch.rand(2, 3, 48, 40), channels_last_to_first)


def test_tokens_with_a_class_token_export_at_the_fixed_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Tokens().eval()
    transform = TokensToMap(prefix=1, h=8, w=6)  # sizes of 32x24 images: the export is for that size only
    path = export_onnx(
        model,
        tmp_path / "tok.onnx",
        target_layer="mix",
        image_size=(32, 24),
        mean=MEAN,
        std=STD,
        reshape_transform=transform,
    )
    assert not AttentionSession(path).dynamic_hw
    _assert_parity(path, model, "mix", torch.rand(3, 3, 32, 24), transform)


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    ).eval()


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (
            "encoder.layers.encoder_layer_1.ln_1",
            "read the output of module .encoder.layers.encoder_layer_0. \\(in `add` .* skip connection around it",
        ),
        ("encoder.layers.encoder_layer_1", "every Grad-CAM weight is zero .* only the class token reaches the head"),
    ],
)
def test_vit_layers_that_cannot_be_exported_say_why(tmp_path: Path, layer: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        export_onnx(_tiny_vit(), tmp_path / "vit.onnx", target_layer=layer, image_size=(32, 32), mean=MEAN, std=STD)
    assert not list(tmp_path.iterdir())


def test_vit_class_token_message_says_what_to_do_instead(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"gainx.attention_maps at the last block's ln_1 / norm1.*global_pool='avg'"):
        export_onnx(_tiny_vit(), tmp_path / "vit.onnx", target_layer="encoder", image_size=(32, 32), mean=MEAN, std=STD)


def _export_parity(model: nn.Module, layer: str, tmp_path: Path, size: int = 32, transform=None) -> AttentionSession:
    path = export_onnx(model, tmp_path / "m.onnx", target_layer=layer, image_size=(size, size), mean=MEAN, std=STD)
    _assert_parity(path, model, layer, torch.rand(2, 3, size, size), transform)
    return AttentionSession(path)


@pytest.mark.slow  # the same head as timm's Swin below, at twice the export time
def test_torchvision_swin_exports(tmp_path: Path) -> None:
    """Swin's head pools a permuted (channels-last strided) LayerNorm output to 1x1, restrided in place by ATen."""
    torch.manual_seed(0)
    model = torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[4, 4], num_classes=5
    ).eval()
    session = _export_parity(model, "features", tmp_path, transform=channels_last_to_first)
    assert not session.dynamic_hw  # window partitioning fixes H, W when torch.export traces it


def test_timm_swin_exports(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=5, img_size=32, window_size=4, depths=(1, 1)
    )
    _export_parity(model.eval(), "layers", tmp_path, transform=channels_last_to_first)


def test_vit_averaging_its_tokens_exports_through_the_detected_layout(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=5,
        img_size=32,
        patch_size=8,
        depth=1,
        embed_dim=64,
        num_heads=2,
        global_pool="avg",
    ).eval()
    # the layout (class token + 4x4 patch tokens) is read off the shape; the reference is told it explicitly
    _export_parity(model, "blocks", tmp_path, transform=TokensToMap(prefix=1, h=4, w=4))


class _SpecialOp(nn.Module):
    """A modified Bessel function after the target layer: torch.onnx has no ONNX function for it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.special.i0(self.conv(x)).mean((2, 3)))


def test_converter_limitation_names_the_op_and_a_way_out(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"no ONNX function for the operation '[a-z_.]*i0'.*limitation of the converter"
    ):
        export_onnx(
            _SpecialOp().eval(), tmp_path / "m.onnx", target_layer="conv", image_size=(8, 8), mean=MEAN, std=STD
        )
    assert not list(tmp_path.iterdir())


class _DictOutput(nn.Module):
    """Returns ``{"logits": ..., "features": ...}`` as many detection-style and Hugging Face models do."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        return {"logits": self.fc(f.mean((2, 3))), "features": f}


def test_a_model_returning_a_dict_exports_with_an_output_selector(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _DictOutput().eval()
    layer, kwargs = "features", dict(image_size=(16, 16), mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="output='logits'"):
        export_onnx(model, tmp_path / "scores.onnx", target_layer=layer, **kwargs)
    path = export_onnx(model, tmp_path / "dict.onnx", target_layer=layer, output="logits", **kwargs)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[0, 2]] * 2)
    session = AttentionSession(path)
    result = session.run(images, class_ids=ids)
    ref_scores, ref_maps = attention_maps(model, _normalize(images), layer, classes=ids, output="logits")
    np.testing.assert_allclose(result.scores, ref_scores.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(result.attention, ref_maps.numpy(), rtol=0, atol=ATOL)
    assert session.metadata["target_layer"] == layer


# the Hugging Face pairs of the attention zoo, at their sizes; ViT at its first block's output (the second
# block carries it to the class token), Swin (sdpa windowed attention, an AdaptiveAvgPool1d pooler) at its norm
HF_LAYERS = {"resnet": None, "convnext": None, "swin": None, "vit": "0"}


def _hugging_face(name: str) -> tuple[nn.Module, str, int]:
    """A small Hugging Face ``...ForImageClassification`` model (random weights), its target layer and image size."""
    pair = next(p for p in ZOO if p.name == f"hf-{name}")
    model = pair.build()
    return model, layer_path(model, HF_LAYERS[name] or pair.layer), pair.size


def _export_hugging_face(model: nn.Module, layer: str, size: int, out: Path) -> Path:
    return export_onnx(
        model.eval(), out, target_layer=layer, output="logits", image_size=(size, size), mean=MEAN, std=STD
    )


@pytest.mark.parametrize("name", ["resnet", "convnext", "swin", "vit"])
def test_hugging_face_models_export_with_parity(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    pytest.importorskip("transformers")
    model, layer, size = _hugging_face(name)
    path = _export_hugging_face(model, layer, size, tmp_path / "hf.onnx")
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[0, 2], [1, 0]])
    session = AttentionSession(path)
    result = session.run(images, class_ids=ids)
    ref_scores, ref_maps = attention_maps(model, _normalize(images), layer, classes=ids, output="logits")
    np.testing.assert_allclose(result.scores, ref_scores.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(result.attention, ref_maps.numpy(), rtol=0, atol=ATOL)
    assert (result.attention.reshape(4, -1).max(1) > 0.99).any()  # maps, not blanks
    assert session.dynamic_hw == (name in ("resnet", "convnext"))  # the transformers fix their patch grid


def test_hugging_face_pre_norm_layer_is_refused_for_its_skip_connection(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    model, first_block, size = _hugging_face("vit")
    layer = first_block.removesuffix("0") + "1.layernorm_before"  # the residual stream bypasses it
    with pytest.raises(ValueError, match="read the output of module .*0' .*a skip connection around it"):
        _export_hugging_face(model, layer, size, tmp_path / "hf.onnx")
    assert not list(tmp_path.iterdir())


def test_a_target_layer_returning_no_tensor_is_named(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    model, layer, size = _hugging_face("resnet")
    encoder = layer.rsplit(".stages", 1)[0]  # returns a BaseModelOutputWithNoAttention
    with pytest.raises(TypeError, match="returns BaseModelOutputWithNoAttention, not a Tensor"):
        _export_hugging_face(model, encoder, size, tmp_path / "hf.onnx")
