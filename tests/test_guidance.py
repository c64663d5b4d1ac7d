"""The selectable guidance losses (gainx.losses.guidance) on hand-computed cases and toys."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gainx.attention import class_evidence
from gainx.attention.capture import capture_output
from gainx.losses import GAIN
from gainx.losses.guidance import GUIDANCES, all_classes_loss, background, rrr_loss, scaled_maps, signed_loss
from gainx.losses.terms import guidance_loss
from gainx.models import SmallCNN
from gainx.ops.cam import normalize_cam

# one image, two classes, a 1x2 "image": class 0 on the right pixel, class 1 absent
EVIDENCE = torch.tensor([[[[-1.0, 2.0]], [[1.0, 0.5]]]])
GUIDE = torch.tensor([[[[0, 1]], [[0, 0]]]], dtype=torch.uint8)
LABELS = torch.tensor([[1.0, 0.0]])


def test_all_classes_hand_values():
    # ReLU -> class 0 [0, 2], class 1 [1, 0.5]; GT peak 2 -> [0, 1] and [0.5, 0.25]
    expected = (0.0 + (0.25 + 0.0625) / 2) / 2
    assert all_classes_loss(EVIDENCE, GUIDE, LABELS).item() == pytest.approx(expected, rel=1e-5)


def test_signed_hand_values_and_ignore():
    # background = left pixel; scale = max |E| of the GT class = 2 -> (-1/2)^2 and (1/2)^2
    assert signed_loss(EVIDENCE, GUIDE, LABELS).item() == pytest.approx(0.25, rel=1e-5)
    ignored = GUIDE.clone()
    ignored[..., 0] = 255  # no supervision on the left pixel: no background left
    assert signed_loss(EVIDENCE, ignored, LABELS).item() == 0.0
    assert background(ignored).sum() == 0


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="evidence"):
        signed_loss(EVIDENCE, GUIDE[:, :1], LABELS)
    with pytest.raises(ValueError, match="evidence"):
        all_classes_loss(EVIDENCE, GUIDE, LABELS[:, :1])


class SumModel(nn.Module):
    """scores = (s, -s) with s = sum of the pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).sum(1)
        return torch.stack([s, -s], dim=1)


@pytest.mark.parametrize("multilabel", [False, True])
def test_rrr_hand_values(multilabel):
    images = torch.full((1, 3, 1, 2), 0.1, requires_grad=True)
    scores = SumModel()(images)
    s = 0.6
    # d/ds sum_c log p_c: softmax -> -2 tanh(s); sigmoid -> sigma(-s) - sigma(s) = -tanh(s / 2)
    g = -2 * math.tanh(s) if not multilabel else -math.tanh(s / 2)
    guide = torch.tensor([[[[0, 1]], [[0, 0]]]], dtype=torch.uint8)  # one background pixel, 3 channels
    got = rrr_loss(images, scores, torch.tensor([0]), guide, multilabel)
    assert got.item() == pytest.approx(3 * g * g, rel=1e-5)
    with pytest.raises(ValueError, match="require grad"):
        rrr_loss(images.detach(), scores, torch.tensor([0]), guide, multilabel)


def test_class_evidence_sums_to_the_logit_for_a_gap_linear_head():
    # SmallCNN: s_c = sum_k W_ck mean(f_k) + b_c, so sum_xy E_c = s_c - b_c for every class
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, width=4).eval()
    images = torch.randn(2, 3, 12, 12)
    with capture_output(model.features) as cap:
        scores = model(images)
    ev = class_evidence(scores, cap.features, torch.tensor([1]), create_graph=False)
    assert ev.shape == (1, 3, 3, 3)
    torch.testing.assert_close(ev.sum(dim=(2, 3))[0], (scores[1] - model.fc.bias).detach(), rtol=1e-4, atol=1e-5)


def _toy(guidance, multilabel=False, seed=0):
    torch.manual_seed(seed)
    model = SmallCNN(num_classes=3, width=6)
    images = torch.randn(6, 3, 16, 16)
    labels = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    guide = torch.zeros(6, 3, 16, 16, dtype=torch.uint8)
    for i in range(6):  # the object is the top-left quadrant
        guide[i, i % 3, :8, :8] = 1
    has_guide = torch.tensor([True, True, True, True, False, False])
    gain = GAIN(model, "features", method="gainext", guidance=guidance, multilabel=multilabel)
    return model, gain, (images, labels, guide, has_guide)


@pytest.mark.parametrize("guidance", GUIDANCES)
def test_each_guidance_decreases_what_it_penalizes(guidance):
    model, gain, batch = _toy(guidance)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = gain(*batch).loss_e.item()
    for _ in range(12):
        out = gain(*batch)
        opt.zero_grad()
        out.loss_e.backward()
        opt.step()
    last = gain(*batch).loss_e.item()
    assert first > 0 and last < 0.7 * first, (guidance, first, last)


def test_rrr_multilabel_and_no_guided_images():
    _, gain, (images, labels, guide, has_guide) = _toy("rrr", multilabel=True)
    assert gain(images, labels, guide, has_guide).loss_e.item() > 0
    none = torch.zeros_like(has_guide)
    for g in ("rrr", "signed"):
        _, gain, _ = _toy(g)
        assert gain(images, labels, guide, none).loss_e.item() == 0.0


def test_guidance_default_and_bad_name():
    model = SmallCNN(num_classes=3, width=4)
    assert GAIN(model, "features").guidance == "counterfactual"  # the default recipe's (gainx.training.presets)
    with pytest.raises(ValueError, match="guidance must be one of"):
        GAIN(model, "features", guidance="paperr")
    with pytest.raises(ValueError, match="counterfactual_jitter must be one of .*'hue'"):
        GAIN(model, "features", method="gainext", guidance="counterfactual", counterfactual_jitter="hue")
    _, gain, (images, labels, guide, has_guide) = _toy("signed")
    with pytest.raises(ValueError, match="guide must be"):
        gain(images, labels, guide[..., :8], has_guide)


def test_scaled_guidance_pulls_a_blank_map_onto_the_mask():
    # a map with no positive evidence anywhere: eq. 7 (ReLU + min-max) passes no gradient, `scaled` does
    evidence = torch.tensor([[[-1.0, -2.0], [-0.5, -1.5]]], requires_grad=True)
    target = torch.tensor([[[1, 0], [0, 0]]], dtype=torch.uint8)
    index = torch.tensor([0])
    paper = guidance_loss(normalize_cam(torch.relu(evidence), (2, 2)), target, index, 1)
    (paper_grad,) = torch.autograd.grad(paper, evidence)
    assert paper_grad.abs().sum() == 0
    scaled = guidance_loss(scaled_maps(evidence, (2, 2)), target, index, 1)
    (scaled_grad,) = torch.autograd.grad(scaled, evidence)
    assert scaled_grad[0, 0, 0] < 0  # descent raises the evidence on the object pixel


def test_rrr_is_calibrated_to_the_cross_entropy_at_its_first_step():
    _, gain, batch = _toy("rrr")
    assert gain.rrr_scale is None
    first = gain(*batch)
    assert gain.rrr_scale > 0
    assert first.loss_e.item() == pytest.approx(first.loss_cl.item(), rel=1e-4)
    scale = gain.rrr_scale
    gain(*batch)
    assert gain.rrr_scale == scale  # kept after the first step
    _, fixed, batch = _toy("rrr")
    fixed.rrr_scale = 2.0
    out = fixed(*batch)
    images = batch[0].detach().requires_grad_(True)
    raw = rrr_loss(images, fixed.model(images), torch.arange(4), batch[2][:4], False)
    assert out.loss_e.item() == pytest.approx(2.0 * raw.item(), rel=1e-3)


class TwoPixelModel(nn.Module):
    """scores = a * x_object + v * x_background on a (1, 1, 1, 2) image."""

    def __init__(self, a: torch.Tensor, v: torch.Tensor) -> None:
        super().__init__()
        self.a, self.v = a, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :1] * self.a + x[:, 0, 0, 1:] * self.v


def _blind_spot() -> tuple[TwoPixelModel, torch.Tensor, torch.Tensor]:
    """A background pixel whose evidence ``v`` lies in the blind direction of ``sum_c log p_c``:
    orthogonal to ``1 - C p`` at the image, yet it moves the classes against each other."""
    a = torch.tensor([2.0, 0.0, -1.0, 0.5])
    image = torch.tensor([[[[1.0, 0.0]]]])  # background pixel at 0: scores = a, whatever v is
    d = 1 - 4 * torch.softmax(a, 0)  # d/ds sum_c log p_c at the image
    u = torch.tensor([0.0, -1.0, 3.0, 1.0])
    v = u - (u @ d) / (d @ d) * d
    model = TwoPixelModel(a, v)
    guide = torch.zeros(1, 4, 1, 2, dtype=torch.uint8)
    guide[0, 0, 0, 0] = 1  # the object is the left pixel; the right one is background
    return model, image, guide


def test_rrr_classes_sees_evidence_in_the_blind_direction_of_rrr():
    model, image, guide = _blind_spot()
    images = image.clone().requires_grad_(True)
    scores = model(images)
    rows = torch.tensor([0])
    p = torch.softmax(scores[0].detach(), 0)
    assert not torch.allclose(model.v, model.v.mean().expand(4))  # the background changes the prediction
    assert rrr_loss(images, scores, rows, guide, False).item() < 1e-10
    # sum_c (d log p_c / dx_bg)^2 = sum_c ((e_c - p) . v)^2: what rrr_classes estimates
    exact = ((model.v - p @ model.v) ** 2).sum().item()
    torch.manual_seed(0)
    draws = [rrr_loss(images, scores, rows, guide, False, each_class=True).item() for _ in range(4000)]
    assert exact > 0.1
    assert sum(draws) / len(draws) == pytest.approx(exact, rel=0.08)


def test_rrr_classes_trains_through_gain():
    _, gain, batch = _toy("rrr_classes")
    out = gain(*batch)
    assert gain.rrr_scale > 0 and out.loss_e.item() > 0
    grads = torch.autograd.grad(out.loss_e, [p for p in gain.model.parameters() if p.requires_grad])
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
