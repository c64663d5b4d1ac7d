"""gainx.attention.head.find_linear_head: GAP + linear heads are found, anything
else is refused; and the found head gives the autograd Grad-CAM weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gainx.attention.head import find_linear_head
from gainx.models import SmallCNN, build_model, default_target_layer


def _head_of(arch: str, model: nn.Module) -> nn.Linear:
    return model.classifier[1] if arch == "efficientnet_b0" else model.fc


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "resnet50", "efficientnet_b0"])
def test_finds_gap_linear_heads(arch):
    model = build_model(arch, 5).eval()
    assert find_linear_head(model, default_target_layer(arch)) is _head_of(arch, model)


@pytest.mark.parametrize("arch", ["mobilenet_v3_large", "mobilenet_v3_small", "vgg16_bn", "vgg11_bn", "convnext_tiny"])
def test_refuses_other_heads(arch):
    assert find_linear_head(build_model(arch, 5).eval(), default_target_layer(arch)) is None


def test_accepts_the_layer_module():
    model = build_model("resnet18", 5).eval()
    assert find_linear_head(model, model.layer4) is model.fc
    assert find_linear_head(model, nn.Conv2d(1, 1, 1)) is None  # not a submodule


def test_refuses_other_layers_and_unknown_names():
    model = build_model("resnet18", 5).eval()
    assert find_linear_head(model, "layer3") is None
    assert find_linear_head(model, "layer4.1") is model.fc  # the last block: its output is layer4's
    assert find_linear_head(model, "no.such.layer") is None
    assert find_linear_head(model, "") is None


def test_dropout_in_training_mode_is_refused():
    model = build_model("efficientnet_b0", 5)
    assert find_linear_head(model.train(), "features.8") is None
    assert find_linear_head(model.eval(), "features.8") is model.classifier[1]
    assert find_linear_head(SmallCNN(3).train(), "features") is not None  # no dropout: exact in both modes


class _MeanHead(nn.Module):
    def __init__(self, pool: str, extra_use: bool = False, after: nn.Module | None = None) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)
        self.pool, self.extra_use, self.after = pool, extra_use, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        if self.pool == "mean":
            z = f.mean((2, 3))
        elif self.pool == "mean_neg":
            z = torch.mean(f, dim=(-1, -2))
        elif self.pool == "functional":
            z = F.adaptive_avg_pool2d(f, 1).flatten(1)
        else:  # max pooling is not a GAP
            z = F.adaptive_max_pool2d(f, 1).flatten(1)
        out = self.fc(z) if self.after is None else self.after(self.fc(z))
        return out + f.sum() if self.extra_use else out


@pytest.mark.parametrize("pool", ["mean", "mean_neg", "functional"])
def test_functional_pooling_forms(pool):
    model = _MeanHead(pool)
    assert find_linear_head(model, "body") is model.fc


@pytest.mark.parametrize(
    "model",
    [_MeanHead("max"), _MeanHead("mean", extra_use=True), _MeanHead("mean", after=nn.Softmax(dim=1))],
    ids=["max-pool", "features-used-twice", "softmax-after-linear"],
)
def test_refuses_non_gap_linear_graphs(model):
    assert find_linear_head(model, "body") is None


class _Untraceable(SmallCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = x * 2
        return super().forward(x)


def test_untraceable_model_gives_none():
    assert find_linear_head(_Untraceable(3), "features") is None


def test_found_head_gives_autograd_gradcam_weights():
    """d logit_c / d F = weight[c] / (h w) at every position (the basis of the fast path)."""
    torch.manual_seed(0)
    model = build_model("resnet18", 6).double().eval()
    head = find_linear_head(model, "layer4")
    store = {}
    model.layer4.register_forward_hook(lambda m, i, o: store.update(F=o))
    logits = model(torch.randn(2, 3, 96, 64, dtype=torch.float64))
    feats = store["F"]
    (grad,) = torch.autograd.grad(logits[:, 3].sum(), feats)
    h, w = feats.shape[-2:]
    want = (head.weight[3] / (h * w))[None, :, None, None].expand_as(grad)
    torch.testing.assert_close(grad, want)
