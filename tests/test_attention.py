"""gainx.attention_maps against an independent Grad-CAM and pytorch-grad-cam (eq. 1-2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import gainx
from gainx.attention.maps import pairs_by_rank
from gainx.ops import normalize_cam, upsample


def bilinear_np(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """Half-pixel bilinear resize (OpenCV INTER_LINEAR / align_corners=False), written out."""
    ih, iw = m.shape

    def coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = coords(h, ih)
    x0, x1, fx = coords(w, iw)
    top = m[y0][:, x0] * (1 - fx) + m[y0][:, x1] * fx
    bot = m[y1][:, x0] * (1 - fx) + m[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bot * fy[:, None]


def reference_gradcam(model, layer, images, cls: int) -> np.ndarray:
    """Grad-CAM as pytorch-grad-cam computes it: hook, mean gradient, ReLU, per-map min-max, resize, min-max."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    scores = model(images)
    handle.remove()
    grads = torch.autograd.grad(scores[:, cls].sum(), store["a"])[0].numpy()
    acts = store["a"].detach().numpy()
    cams = np.maximum((grads.mean(axis=(2, 3))[:, :, None, None] * acts).sum(1), 0)
    out = []
    for cam in cams:
        cam = (cam - cam.min()) / (1e-7 + (cam - cam.min()).max())
        cam = bilinear_np(cam, *images.shape[-2:])
        cam = cam - cam.min()
        out.append(cam / (1e-7 + cam.max()))
    return np.stack(out)


@pytest.mark.parametrize("analytic_head", [True, False], ids=["closed-form-head", "autograd"])
@pytest.mark.parametrize("size", [(20, 28), (33, 17)])
def test_matches_independent_reference(small_cnn, size, analytic_head):
    x = torch.randn(3, 3, *size)
    for cls in range(3):
        _, maps = gainx.attention_maps(
            small_cnn, x, "features", classes=torch.full((3, 1), cls), analytic_head=analytic_head
        )
        ref = reference_gradcam(small_cnn, small_cnn.features, x, cls)
        np.testing.assert_allclose(maps[:, 0].numpy(), ref, atol=1e-3)


def test_matches_pytorch_grad_cam_on_resnet18():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.randn(2, 3, 64, 80)
    with pgc.GradCAM(model=model, target_layers=[model.layer4]) as cam:
        for cls in (0, 4):
            theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(cls)] * 2)
            _, ours = gainx.attention_maps(model, x, "layer4", classes=[[cls], [cls]])
            np.testing.assert_allclose(ours[:, 0].numpy(), theirs, atol=1e-3)


def test_topk_shapes_scores_and_order(small_cnn):
    x = torch.randn(4, 3, 16, 16)
    scores, maps = gainx.attention_maps(small_cnn, x, "features", topk=3, size=(10, 12))
    assert scores.shape == (4, 5) and maps.shape == (4, 3, 10, 12)
    torch.testing.assert_close(scores, small_cnn(x))
    top = scores.topk(3).indices
    _, given = gainx.attention_maps(small_cnn, x, "features", classes=top, size=(10, 12))
    torch.testing.assert_close(maps, given)
    assert maps.min() >= 0 and maps.max() <= 1
    assert not maps.requires_grad and not scores.requires_grad


def test_classes_of_each_image_are_independent(small_cnn):
    x = torch.randn(3, 3, 16, 16)
    classes = torch.tensor([[0, 4], [2, 1], [3, 3]])
    _, maps = gainx.attention_maps(small_cnn, x, "features", classes=classes)
    for b in range(3):
        for k in range(2):
            _, single = gainx.attention_maps(small_cnn, x[b : b + 1], "features", classes=classes[b : b + 1, k : k + 1])
            torch.testing.assert_close(maps[b, k], single[0, 0], atol=1e-5, rtol=0)


def test_hooks_are_removed_and_mode_kept(small_cnn):
    small_cnn.train()
    x = torch.randn(2, 3, 16, 16)
    for _ in range(3):
        gainx.attention_maps(small_cnn, x, "features")
    assert all(not m._forward_hooks and not m._backward_hooks for m in small_cnn.modules())
    assert small_cnn.training
    with pytest.raises(ValueError, match="class ids"):
        gainx.attention_maps(small_cnn, x, "features", classes=[[0], [9]])  # out of range: no hook leaks either
    assert not small_cnn.features._forward_hooks


def test_bad_arguments_are_named(small_cnn):
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="target layer 'nope'"):
        gainx.attention_maps(small_cnn, x, "nope")
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 5\)"):
        gainx.attention_maps(small_cnn, x, "features", classes=[[0], [5]])
    with pytest.raises(ValueError, match=r"classes must have shape \(2, K\)"):
        gainx.attention_maps(small_cnn, x, "features", classes=torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        gainx.attention_maps(small_cnn, x, "features", classes=torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"topk must be in \[1, 5\]"):
        gainx.attention_maps(small_cnn, x, "features", topk=6)
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\)"):
        gainx.attention_maps(small_cnn, x[0], "features")


def test_constant_map_gives_zeros_not_nan():
    cam = torch.full((2, 3, 4), 0.7)
    out = normalize_cam(cam, (9, 11))
    assert torch.equal(out, torch.zeros_like(out))
    zero_model = gainx.models.SmallCNN(3, width=4).eval()
    torch.nn.init.zeros_(zero_model.fc.weight)
    _, maps = gainx.attention_maps(zero_model, torch.randn(2, 3, 16, 16), "features")
    assert torch.isfinite(maps).all() and maps.abs().max() == 0


def test_normalized_low_res_map_upsamples_to_full_res_normalization():
    cam = torch.rand(3, 5, 7)
    full = upsample(cam, (40, 31))
    lo, hi = full.amin((1, 2), keepdim=True), full.amax((1, 2), keepdim=True)
    torch.testing.assert_close(upsample(normalize_cam(cam, (40, 31)), (40, 31)), (full - lo) / (hi - lo + 1e-7))


def test_second_order_maps_reach_the_weights(small_cnn):
    x = torch.randn(2, 3, 16, 16)
    _, maps = gainx.attention_maps(small_cnn, x, "features", classes=[[1], [2]], create_graph=True)
    (maps * torch.rand_like(maps)).sum().backward()
    # fc.weight only enters the maps through the Grad-CAM weights d s_c / d f (eq. 1)
    assert small_cnn.fc.weight.grad is not None and small_cnn.fc.weight.grad.abs().sum() > 0
    assert small_cnn.fc.weight.grad[[0, 3, 4]].abs().sum() == 0  # classes never explained get nothing


def test_frozen_weights_and_plain_inputs_work():
    model = gainx.models.SmallCNN(3, width=4).eval().requires_grad_(False)
    scores, maps = gainx.attention_maps(model, torch.randn(2, 3, 16, 16), "features")
    assert maps.shape == (2, 1, 16, 16) and torch.isfinite(maps).all()


def test_pairs_by_rank():
    index = torch.tensor([0, 0, 0, 2, 3, 3])
    assert pairs_by_rank(index).tolist() == [0, 1, 2, 0, 0, 1]
    assert pairs_by_rank(torch.tensor([], dtype=torch.long)).numel() == 0


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_closed_form_head_equals_autograd_path(arch):
    model = gainx.models.build_model(arch, 6).eval()
    layer = gainx.models.default_target_layer(arch)
    x = torch.randn(2, 3, 64, 48)
    s1, fast = gainx.attention_maps(model, x, layer, topk=3)
    s2, slow = gainx.attention_maps(model, x, layer, topk=3, analytic_head=False)
    torch.testing.assert_close(s1, s2)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    # resnet18 has a GAP + linear head (closed form); mobilenet_v3's MLP head takes the autograd path
    assert (gainx.attention.head.find_linear_head(model, layer) is not None) == (arch == "resnet18")


def test_replaced_head_is_traced_again():
    model = gainx.models.build_model("resnet18", 6).eval()
    x = torch.randn(2, 3, 64, 48)
    gainx.attention_maps(model, x, "layer4", topk=2)  # caches the head found by tracing
    model.fc = torch.nn.Linear(model.fc.in_features, 4)  # fine-tuning swaps the head
    scores, fast = gainx.attention_maps(model, x, "layer4", topk=2)
    _, slow = gainx.attention_maps(model, x, "layer4", topk=2, analytic_head=False)
    assert scores.shape == (2, 4)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
