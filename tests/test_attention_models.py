"""attention_maps and GAIN beyond plain CNNs: layouts, outputs, grad contexts, in-place ops, MC dropout, scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import gainx
from gainx.attention.layout import TokensToMap, channels_last_to_first, feature_layout, grid_fits
from gainx.ops import normalize_cam, upsample


def reference_maps(features: torch.Tensor, grads: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Grad-CAM (eq. 1-2) of (B, C, h, w) features and gradients, upsampled and min-max normalized."""
    raw = F.relu((grads.mean(dim=(2, 3), keepdim=True) * features).sum(1))
    up = upsample(raw, size)
    lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
    return (up - lo) / (hi - lo)


class ChannelsLastNet(nn.Module):
    """conv -> (B, h, w, C) block (the target) -> LayerNorm -> mean over (h, w) -> linear, like Swin / ConvNeXt."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, stride=4, padding=1)
        self.block = nn.Sequential(torchvision.ops.Permute([0, 2, 3, 1]), nn.Linear(6, 10))
        self.norm = nn.LayerNorm(10)
        self.fc = nn.Linear(10, num_classes)

    def head(self, f_last: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(f_last).mean(dim=(1, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


class MLPHeadNet(nn.Module):
    """Conv features and an MLP head (not GAP + linear: the maps need a backward pass)."""

    def __init__(self, num_classes: int = 4, as_dict: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16), nn.Tanh())
        self.fc = nn.Linear(16, num_classes)
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict:
        scores = self.fc(self.head(self.features(x)))
        return {"logits": scores, "aux": scores.detach().softmax(1)} if self.as_dict else scores


# -- scale: eps relative to the peak -----------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-4, 1e-6, 1e-8])
def test_normalization_does_not_depend_on_score_scale(scale):
    cam = F.relu(torch.randn(6, 5, 7))
    ref = normalize_cam(cam, (20, 28))
    torch.testing.assert_close(normalize_cam(cam * scale, (20, 28)), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("analytic_head", [True, False], ids=["closed-form-head", "autograd"])
def test_maps_do_not_depend_on_score_scale(small_cnn, analytic_head):
    """Scaling the classifier scales the raw maps (peaks ~1e-9 here); the normalized maps stay put."""
    x = torch.randn(3, 3, 24, 20)
    classes = [[0], [2], [4]]
    _, ref = gainx.attention_maps(small_cnn, x, "features", classes=classes, analytic_head=analytic_head)
    with torch.no_grad():
        small_cnn.fc.weight.mul_(1e-8)
    _, small = gainx.attention_maps(small_cnn, x, "features", classes=classes, analytic_head=analytic_head)
    assert ref.amax() > 0.999  # not a flat map
    torch.testing.assert_close(small, ref, atol=1e-5, rtol=0)


def test_all_zero_map_has_zero_gradient_not_nan():
    cam = torch.zeros(2, 3, 4, requires_grad=True)
    normalize_cam(cam, (6, 8)).sum().backward()
    assert torch.equal(cam.grad, torch.zeros_like(cam))


# -- MC dropout: the cached head follows every submodule's mode ---------------------------------------


def test_dropout_switched_on_in_eval_model_leaves_the_closed_form():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8, 3),
    ).eval()
    x = torch.randn(2, 3, 12, 12)
    gainx.attention_maps(model, x, "1")  # traces and caches the head of the eval model
    model[4].train()  # MC dropout: only the dropout is in train mode
    torch.manual_seed(1)
    s_head, m_head = gainx.attention_maps(model, x, "1", classes=[[0], [1]])
    torch.manual_seed(1)
    s_grad, m_grad = gainx.attention_maps(model, x, "1", classes=[[0], [1]], analytic_head=False)
    torch.testing.assert_close(s_head, s_grad)
    torch.testing.assert_close(m_head, m_grad, atol=1e-5, rtol=0)


# -- in-place op after the target layer ------------------------------------------------------------------


def test_inplace_relu_after_target_layer_does_not_change_the_explained_features():
    """DenseNet applies F.relu(norm5, inplace=True) after ``features``: the maps explain norm5 itself."""
    model = torchvision.models.densenet121(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    f = model.features(x).detach().requires_grad_(True)  # norm5 output, before the in-place ReLU
    scores = model.classifier(torch.flatten(F.adaptive_avg_pool2d(F.relu(f), 1), 1))
    (g,) = torch.autograd.grad(scores[:, 4].sum(), f)
    got_scores, maps = gainx.attention_maps(model, x, "features.norm5", classes=[[4], [4]])
    torch.testing.assert_close(got_scores, scores.detach())
    torch.testing.assert_close(maps[:, 0], reference_maps(f.detach(), g, (64, 64)), atol=1e-5, rtol=0)


# -- layouts -------------------------------------------------------------------------------------------------


def test_channels_last_features_are_detected():
    model = ChannelsLastNet().eval()
    x = torch.randn(2, 3, 32, 40)
    f = model.block(model.stem(x)).detach().requires_grad_(True)  # (2, 8, 10, 10)
    (g,) = torch.autograd.grad(model.head(f)[:, 1].sum(), f)
    ref = reference_maps(f.detach().permute(0, 3, 1, 2), g.permute(0, 3, 1, 2), (32, 40))
    _, auto = gainx.attention_maps(model, x, "block", classes=[[1], [1]])
    _, given = gainx.attention_maps(model, x, "block", classes=[[1], [1]], reshape_transform=channels_last_to_first)
    torch.testing.assert_close(auto[:, 0], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(given, auto)


def test_feature_layout_reads_common_shapes():
    assert feature_layout(torch.empty(2, 768, 7, 7), (224, 224)) is None
    assert feature_layout(torch.empty(2, 7, 7, 768), (224, 224)) is channels_last_to_first
    assert feature_layout(torch.empty(2, 4, 5, 96), (128, 160)) is channels_last_to_first
    assert feature_layout(torch.empty(2, 8, 8, 8), (64, 64)) is None  # ambiguous: PyTorch's (B, C, h, w)
    assert feature_layout(torch.empty(2, 197, 192), (224, 224)) == TokensToMap(1, 14, 14)
    assert feature_layout(torch.empty(2, 49, 768), (224, 224)) == TokensToMap(0, 7, 7)
    assert feature_layout(torch.empty(2, 4 + 12, 64), (48, 64), prefix_tokens=4) == TokensToMap(4, 3, 4)
    assert grid_fits(7, 7, (224, 224)) and grid_fits(4, 3, (100, 70)) and not grid_fits(7, 768, (224, 224))


def test_tokens_to_map_folds_row_major_after_the_prefix():
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    out = TokensToMap(1, 2, 3)(tokens)
    assert out.shape == (2, 3, 2, 3)
    assert torch.equal(out[1, :, 1, 2], tokens[1, 1 + 5])


def test_unreadable_layouts_ask_for_reshape_transform():
    with pytest.raises(ValueError, match=r"several token layouts.*reshape_transform"):
        feature_layout(torch.empty(2, 9, 8), (32, 48))  # 3x3 tokens (stride 11-16) or 1 + 2x4 (stride 12)
    with pytest.raises(ValueError, match=r"\(2, 51, 8\) is not .*tokens.*reshape_transform"):
        feature_layout(torch.empty(2, 51, 8), (224, 224))
    with pytest.raises(ValueError, match=r"\(2, 10\) is not \(B, C, h, w\).*reshape_transform"):
        feature_layout(torch.empty(2, 10), (32, 32))


def test_bad_reshape_transform_is_named(small_cnn):
    with pytest.raises(ValueError, match=r"\(B, C, h, w\) with B = 2 after reshape_transform, got \(2, 512\)"):
        gainx.attention_maps(small_cnn, torch.randn(2, 3, 16, 16), "features", reshape_transform=lambda t: t.flatten(1))


# -- outputs --------------------------------------------------------------------------------------------------


def test_output_selector_picks_the_scores():
    plain = MLPHeadNet().eval()
    wrapped = MLPHeadNet(as_dict=True).eval()
    wrapped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    s_ref, m_ref = gainx.attention_maps(plain, x, "features", topk=2)
    for output in ("logits", lambda r: r["logits"]):
        s, m = gainx.attention_maps(wrapped, x, "features", topk=2, output=output)
        torch.testing.assert_close(s, s_ref)
        torch.testing.assert_close(m, m_ref)
    tupled = nn.Sequential(plain, _Pair())
    s, m = gainx.attention_maps(tupled, x, "0.features", topk=2, output=1)
    torch.testing.assert_close(m, m_ref)


class _Pair(nn.Module):
    def forward(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return s.detach(), s


def test_missing_or_wrong_output_selector_names_what_was_returned():
    model = MLPHeadNet(as_dict=True).eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(TypeError, match=r"dict with keys \['logits', 'aux'\].*pass output="):
        gainx.attention_maps(model, x, "features")
    with pytest.raises(ValueError, match=r"output='scores'.*dict with keys \['logits', 'aux'\]"):
        gainx.attention_maps(model, x, "features", output="scores")
    with pytest.raises(ValueError, match=r"output=2 cannot index.*dict"):
        gainx.attention_maps(model, x, "features", output=2)


# -- grad contexts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_attention_under_no_grad_and_inference_mode(context):
    model = MLPHeadNet().eval()
    x = torch.randn(2, 3, 16, 16)
    s_ref, m_ref = gainx.attention_maps(model, x, "features", topk=2)
    with context():
        images = x.clone()  # under inference_mode: an inference tensor
        s, m = gainx.attention_maps(model, images, "features", topk=2)
    torch.testing.assert_close(s, s_ref)
    torch.testing.assert_close(m, m_ref)


# -- GAIN ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("guidance", ["paper", "signed"])
def test_gainext_step_on_channels_last_model_with_dict_output(guidance):
    class DictOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = ChannelsLastNet()

        def forward(self, x: torch.Tensor) -> dict:
            return {"logits": self.net(x)}

    model = DictOut().train()
    gain = gainx.GAIN(model, "net.block", method="gainext", output="logits", guidance=guidance)
    x = torch.randn(2, 3, 32, 32)
    labels = F.one_hot(torch.tensor([1, 3]), 4).float()
    guide = (torch.rand(2, 4, 32, 32) > 0.5).to(torch.uint8)
    out = gain(x, labels, guide, torch.tensor([True, True]))
    assert out.cam.shape == (2, 8, 8)
    assert all(torch.isfinite(t) for t in (out.loss, out.loss_cl, out.loss_am, out.loss_e)) and out.loss_e > 0
    out.loss.backward()
    assert model.net.block[1].weight.grad.abs().sum() > 0


def _tiny_vit() -> nn.Module:
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=16, num_classes=4
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return model


VIT_LAYER = "encoder.layers.encoder_layer_0.ln_1"


def test_maps_of_a_transformer_are_twice_differentiable():
    """create_graph=True on a model built on scaled_dot_product_attention (whose fused CPU and GPU kernels
    have no double backward): the maps backpropagate to the weights."""
    model = _tiny_vit().train()
    x = torch.randn(2, 3, 32, 32)
    _, maps = gainx.attention_maps(model, x, VIT_LAYER, topk=1, create_graph=True)
    maps.sum().backward()
    grad = model.encoder.layers[0].mlp[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize(("guidance", "second_order"), [("paper", True), ("rrr", False)])
def test_gain_second_order_and_rrr_on_a_transformer(guidance, second_order):
    model = _tiny_vit().train()
    gain = gainx.GAIN(model, VIT_LAYER, method="gainext", guidance=guidance, second_order=second_order)
    x = torch.randn(2, 3, 32, 32)
    labels = F.one_hot(torch.tensor([1, 3]), 4).float()
    guide = (torch.rand(2, 4, 32, 32) > 0.5).to(torch.uint8)
    out = gain(x, labels, guide, torch.tensor([True, True]))
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_gain_without_gradients_says_so_and_scores_l_cl_with_mining_off(context):
    model = MLPHeadNet().eval()
    gain = gainx.GAIN(model, "features", method="gain")
    x, labels = torch.randn(2, 3, 16, 16), F.one_hot(torch.tensor([1, 3]), 4).float()
    with context():
        with pytest.raises(RuntimeError, match=r"needs gradients.*mining=False"):
            gain(x, labels)
        out = gain(x, labels, mining=False)
    assert torch.isfinite(out.loss) and out.loss == out.loss_cl
