"""Each GAIN / GAINext loss term on tiny hand-computed cases (eq. 3-8)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import gainx.losses.gain as gain_module
from gainx.data.records import IGNORE
from gainx.losses import GAIN, attention_mining_loss, classification_loss, guidance_loss
from gainx.losses.bn import frozen_bn_stats
from gainx.losses.terms import am_class_score, classification_losses, per_image_mean, weighted_mean
from gainx.models import SmallCNN
from gainx.ops import attention_erase_eager, erase, soft_mask, upsample


def test_classification_loss_hand_values():
    scores = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ce = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(0.5)) / 2
    assert classification_loss(scores, one_hot, multilabel=False).item() == pytest.approx(ce, rel=1e-6)
    multi = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    sp = lambda z: math.log1p(math.exp(-z))  # -log sigmoid(z)
    soft_margin = ((sp(2) + sp(0)) / 2 + (sp(0) + sp(0)) / 2) / 2
    assert classification_loss(scores, multi, multilabel=True).item() == pytest.approx(soft_margin, rel=1e-6)
    l0, l1 = -math.log(math.exp(2) / (math.exp(2) + 1)), -math.log(0.5)
    per_image = classification_losses(scores, one_hot, multilabel=False)
    weighted = weighted_mean(per_image, torch.tensor([1.0, 3.0]))
    assert weighted.item() == pytest.approx((l0 + 3 * l1) / 4, rel=1e-6)
    with pytest.raises(ValueError, match=r"weights must be \(2,\)"):
        weighted_mean(per_image, torch.ones(3))


def test_counterfactual_images_weigh_counterfactual_weight_in_l_cl():
    model = SmallCNN(3, width=8).eval()  # batch-norm running statistics: rows do not depend on each other
    images, labels, guide = _batch()
    pasted = torch.randn(2, 3, 16, 16)
    pasted_labels = torch.nn.functional.one_hot(torch.tensor([2, 0]), 3).float()
    with torch.no_grad():
        rows = torch.nn.functional.cross_entropy(
            model(torch.cat([images, pasted])), torch.tensor([0, 1, 2, 0, 2, 0]), reduction="none"
        )
    for w in (1.0, 4.0):
        gain = GAIN(model, "features", method="gainext", counterfactual_weight=w, counterfactual_eta=0)
        gain.bank.draw = lambda count: (pasted, pasted_labels, guide[:2])
        out = gain(images, labels, guide, torch.ones(4, dtype=torch.bool), mining=False)
        expected = (rows[:4].sum() + w * rows[4:].sum()) / (4 + 2 * w)
        torch.testing.assert_close(out.loss_cl.detach(), expected)
    with pytest.raises(ValueError, match="counterfactual_weight must be > 0"):
        GAIN(model, "features", guidance="counterfactual", counterfactual_weight=0.0)


def test_soft_mask_and_erase_hand_values():
    # one channel, 1x2 feature map, gradient mean 1 -> A = ReLU(f) = [0, 2]; image 1x2 -> no resize
    features = torch.tensor([[[[-1.0, 2.0]]]])
    grads = torch.ones_like(features)
    images = torch.tensor([[[[3.0, 5.0]]]]).expand(1, 3, 1, 2)
    out = attention_erase_eager(features, grads, images, torch.tensor([0]), sigma=0.5, omega=10.0)
    norm = torch.tensor([0.0, 2.0 / (2.0 + 1e-7)])
    torch.testing.assert_close(out.cam[0, 0], norm)
    t = 1 / (1 + torch.exp(-10 * (norm - 0.5)))  # eq. 4
    torch.testing.assert_close(out.erased[0, 0, 0], torch.tensor([3.0, 5.0]) * (1 - t))  # eq. 3
    torch.testing.assert_close(soft_mask(norm, 0.5, 10.0), t)


def test_erase_indexes_images_for_each_pair():
    images = torch.rand(2, 3, 8, 8)
    feats, grads = torch.rand(3, 4, 2, 2), torch.rand(3, 4, 2, 2)
    out = attention_erase_eager(feats, grads, images, torch.tensor([1, 1, 0]))
    single = attention_erase_eager(feats[2:], grads[2:], images[:1], torch.tensor([0]))
    torch.testing.assert_close(out.erased[2], single.erased[0])
    assert out.erased.shape == (3, 3, 8, 8) and out.cam.shape == (3, 2, 2)


def test_attention_mining_loss_is_per_image_mean_of_class_probability():
    scores_am = torch.tensor([[0.0, 0.0], [2.0, -2.0], [1.0, 1.0]])
    index, classes = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0])
    sig = torch.sigmoid
    expected = ((sig(torch.tensor(0.0)) + sig(torch.tensor(-2.0))) / 2 + sig(torch.tensor(1.0))) / 2
    got = attention_mining_loss(scores_am, index, classes, num_images=2, kind="auto", multilabel=True)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    soft = am_class_score(scores_am, classes, "auto", multilabel=False)
    torch.testing.assert_close(soft, torch.tensor([0.5, torch.softmax(torch.tensor([2.0, -2.0]), 0)[1].item(), 0.5]))
    torch.testing.assert_close(am_class_score(scores_am, classes, "logit", False), torch.tensor([0.0, -2.0, 1.0]))
    with pytest.raises(ValueError, match="am score"):
        am_class_score(scores_am, classes, "prob", False)


def test_per_image_mean_skips_images_without_pairs():
    values = torch.tensor([1.0, 3.0, 10.0])
    assert per_image_mean(values, torch.tensor([0, 0, 2]), 4).item() == pytest.approx((2.0 + 10.0) / 2)
    assert per_image_mean(torch.tensor([]), torch.tensor([], dtype=torch.long), 3).item() == 0.0


def test_per_image_mean_gradient_is_one_over_pairs_times_images():
    values = torch.tensor([1.0, 3.0, 10.0, -2.0], requires_grad=True)
    index = torch.tensor([0, 0, 2, 3])  # image 1 has no pair: 3 images count
    per_image_mean(values, index, 5).backward()
    torch.testing.assert_close(values.grad, torch.tensor([1 / 6, 1 / 6, 1 / 3, 1 / 3]))


def test_guidance_loss_hand_values_and_ignore():
    maps = torch.tensor([[[0.5, 1.0], [0.0, 0.2]]])
    targets = torch.tensor([[[1, 1], [0, 255]]], dtype=torch.uint8)
    expected = (0.25 + 0.0 + 0.0) / 3  # the ignored pixel counts for nothing
    assert guidance_loss(maps, targets, torch.tensor([0]), 1).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="differ in shape"):
        guidance_loss(maps, targets[:, :1], torch.tensor([0]), 1)


def _batch(b=4, c=3, size=16):
    images = torch.randn(b, 3, size, size)
    labels = torch.nn.functional.one_hot(torch.arange(b) % c, c).float()
    guide = torch.zeros(b, c, size, size, dtype=torch.uint8)
    guide[:, :, 4:12, 4:12] = 1
    return images, labels, guide


def test_gain_totals_follow_eq6_and_eq8():
    model = SmallCNN(3, width=8)
    images, labels, guide = _batch()
    has = torch.tensor([True, False, True, False])
    for method in ("baseline", "gain", "gainext"):
        torch.manual_seed(0)
        out = GAIN(model, "features", method=method, alpha=0.7, omega_e=3.0)(images, labels, guide, has)
        expected = (
            out.loss_cl
            + (0 if method == "baseline" else 0.7 * out.loss_am)
            + (3.0 * out.loss_e if method == "gainext" else 0)
        )
        torch.testing.assert_close(out.loss, expected)
        assert (out.loss_am > 0) == (method != "baseline")
        assert (out.loss_e > 0) == (method == "gainext")


def test_streams_with_zero_weight_are_not_computed():
    model = SmallCNN(3, width=8)
    images, labels, guide = _batch()
    has = torch.tensor([True, False, True, False])
    torch.manual_seed(0)
    full = GAIN(model, "features", method="gainext", alpha=1.0, omega_e=1.0)(images, labels, guide, has)
    torch.manual_seed(0)
    cl_only = GAIN(model, "features", method="gainext", alpha=0.0, omega_e=0.0)(images, labels, guide, has)
    assert full.cam is not None and cl_only.cam is None and cl_only.scores_am is None
    assert cl_only.loss_am == 0 and cl_only.loss_e == 0
    torch.testing.assert_close(cl_only.loss, full.loss_cl)
    calls = []
    hook = model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    torch.manual_seed(0)
    guided_only = GAIN(model, "features", method="gainext", alpha=0.0, omega_e=1.0)(images, labels, guide, has)
    hook.remove()
    assert guided_only.cam is not None and guided_only.loss_e > 0  # L_e still needs the attention
    assert len(calls) == 1 and guided_only.scores_am is None and guided_only.loss_am == 0  # S_am not run
    torch.testing.assert_close(guided_only.loss, full.loss_cl + full.loss_e)


def test_no_erased_images_are_built_at_alpha_zero(monkeypatch):
    model = SmallCNN(3, width=8)
    images, labels, guide = _batch()
    has = torch.tensor([True, False, True, False])
    torch.manual_seed(0)
    full = GAIN(model, "features", method="gainext", guidance="paper", alpha=1.0, omega_e=1.0)(
        images, labels, guide, has
    )

    def refuse(*args, **kwargs):
        raise AssertionError("attention_erase ran, though nothing reads the erased images at alpha = 0")

    monkeypatch.setattr(gain_module, "attention_erase", refuse)
    torch.manual_seed(0)
    guided = GAIN(model, "features", method="gainext", guidance="paper", alpha=0.0, omega_e=1.0)(
        images, labels, guide, has
    )
    assert guided.erased is None and guided.scores_am is None
    torch.testing.assert_close(guided.cam, full.cam)  # the attention of eq. 1-2, as the erase step computes it
    torch.testing.assert_close(guided.loss_e, full.loss_e)  # the paper's L_e reads it
    guided.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_guidance_only_uses_guided_samples():
    model = SmallCNN(3, width=8)
    images, labels, guide = _batch()
    has = torch.tensor([True, False, False, True])
    objective = GAIN(model, "features", method="gainext")
    base = objective(images, labels, guide, has).loss_e
    changed = guide.clone()
    changed[[1, 2]] = 1 - changed[[1, 2]]  # unguided samples' guides are never read
    torch.testing.assert_close(objective(images, labels, changed, has).loss_e, base)
    changed[0] = 1 - changed[0]
    assert not torch.allclose(objective(images, labels, changed, has).loss_e, base)
    none = objective(images, labels, guide, torch.zeros(4, dtype=torch.bool)).loss_e
    assert none.item() == 0.0
    with pytest.raises(ValueError, match="needs guide"):
        objective(images, labels)


def test_multilabel_pairs_cover_every_ground_truth_class():
    model = SmallCNN(4, width=8)
    images = torch.randn(2, 3, 16, 16)
    labels = torch.tensor([[1.0, 0, 1, 1], [0, 1, 0, 0]])
    out = GAIN(model, "features", multilabel=True)(images, labels)
    assert out.pair_index.tolist() == [0, 0, 0, 1] and out.pair_class.tolist() == [0, 2, 3, 1]
    assert out.erased.shape == (4, 3, 16, 16) and out.scores_am.shape == (4, 4)
    assert out.maps((16, 16)).shape == (4, 16, 16)


def test_second_order_trains_through_gradcam_weights():
    images, labels, _ = _batch()
    grads = {}
    for second in (False, True):
        torch.manual_seed(0)
        model = SmallCNN(3, width=8)
        out = GAIN(model, "features", second_order=second)(images, labels)
        grads[second] = torch.autograd.grad(out.loss_am, model.fc.weight)[0]
    assert not torch.allclose(grads[False], grads[True])


def test_am_gradient_attention_scores_erased_images_with_constant_weights():
    images, labels, _ = _batch()
    models = {}
    for how in ("network", "attention"):
        torch.manual_seed(0)
        models[how] = SmallCNN(3, width=8)
    scorer = copy.deepcopy(models["attention"]).requires_grad_(False)  # the same weights, as constants
    out = GAIN(models["attention"], "features", am_gradient="attention")(images, labels)
    with frozen_bn_stats(scorer):
        expected = attention_mining_loss(scorer(out.erased), out.pair_index, out.pair_class, 4, "auto", False)
    torch.testing.assert_close(out.loss_am, expected)
    weights = list(models["attention"].parameters())
    got = torch.autograd.grad(out.loss_am, weights, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(expected, weights, allow_unused=True)
    for g, w in zip(got[:-1], want[:-1]):
        torch.testing.assert_close(g, w)
    # the classifier's bias does not move A_c: L_am could reach it only by scoring the erased images
    assert got[-1] is None and want[-1] is None
    paper = GAIN(models["network"], "features")(images, labels)
    torch.testing.assert_close(paper.loss_am, out.loss_am)
    assert torch.count_nonzero(torch.autograd.grad(paper.loss_am, models["network"].fc.bias)[0]) > 0
    with pytest.raises(ValueError, match="am_gradient must be one of"):
        GAIN(models["network"], "features", am_gradient="classifier")
    with pytest.raises(ValueError, match="cannot score the erased images through nn.DataParallel"):
        GAIN(torch.nn.DataParallel(models["network"]), "module.features", am_gradient="attention")


@pytest.mark.parametrize("backend", ["eager", "fused"])
def test_am_fill_context_erases_to_the_surroundings_with_the_gradient_of_its_own_mask(backend):
    images, labels, _ = _batch(b=3, size=17)
    models = {}
    for fill in ("zero", "context"):
        torch.manual_seed(0)
        models[fill] = SmallCNN(3, width=8).eval()
    out = GAIN(models["context"], "features", am_fill="context", backend=backend)(images, labels)
    source = images.index_select(0, out.pair_index)
    own_mask = soft_mask(upsample(out.cam, (17, 17)), 0.5, 10.0)  # carries the graph to the weights
    expected = erase(source, own_mask, "context")
    torch.testing.assert_close(out.erased, expected, atol=1e-5, rtol=1e-5)
    weights = list(models["context"].features.parameters())  # A_c's features (first order: not the classifier)
    probe = torch.randn(expected.shape, generator=torch.Generator().manual_seed(7))
    got = torch.autograd.grad((out.erased * probe).sum(), weights, retain_graph=True)
    want = torch.autograd.grad((expected * probe).sum(), weights)
    for g, w in zip(got, want):
        assert torch.count_nonzero(w) > 0
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    paper = GAIN(models["zero"], "features", backend=backend)(images, labels)
    torch.testing.assert_close(paper.erased, source - own_mask.unsqueeze(1).detach() * source, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(paper.erased, out.erased)
    with pytest.raises(ValueError, match="am_fill must be one of"):
        GAIN(models["zero"], "features", am_fill="blur")


def test_frozen_bn_keeps_running_stats_but_uses_batch_stats():
    model = SmallCNN(3, width=8).train()
    bn = model.features[0][1]
    before = (bn.running_mean.clone(), bn.num_batches_tracked.clone())
    x = torch.randn(4, 3, 16, 16) * 3 + 1
    with frozen_bn_stats(model):
        y = model(x)
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.num_batches_tracked, before[1])
    model.eval()
    assert not torch.allclose(y, model(x))  # train-mode (batch statistics) output, not eval
    model.train()
    model(x)
    assert not torch.equal(bn.running_mean, before[0]) and bn.momentum == 0.1


def test_gain_argument_errors():
    model = SmallCNN(3, width=8)
    with pytest.raises(ValueError, match="method"):
        GAIN(model, "features", method="gain++")
    with pytest.raises(ValueError, match="target layer"):
        GAIN(model, "head")
    with pytest.raises(ValueError, match="labels must be"):
        GAIN(model, "features")(torch.randn(2, 3, 16, 16), torch.zeros(3, 3))


def test_a_guide_ignored_everywhere_is_left_out_of_the_guidance_average():
    """eq. 7 averages over the images that carry supervision: a pair whose guide is 255 everywhere counts as
    no guide at all, not as a zero that halves the others' L_e."""
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    targets = (torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5).to(torch.uint8)
    targets[1] = IGNORE  # image 1's only pair
    targets[2, :2] = IGNORE  # image 0's second pair: partly ignored, still counted
    index = torch.tensor([0, 1, 0])
    alone = guidance_loss(maps[[0, 2]], targets[[0, 2]], torch.tensor([0, 0]), 2)
    assert guidance_loss(maps, targets, index, 2).item() == pytest.approx(alone.item())
