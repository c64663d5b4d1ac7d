"""Counterfactual pasting (gainx.data.counterfactual), its bank, and the guidance that uses them."""

from __future__ import annotations

import math

import pytest
import torch

from gainx.data.counterfactual import (
    counterfactual_pairs,
    fill_objects,
    jitter_objects,
    object_pixels,
    paste_objects,
    shift_objects,
)
from gainx.losses import GAIN
from gainx.losses.counterfactual import CounterfactualBank
from gainx.losses.terms import classification_loss, classification_losses
from gainx.models import SmallCNN


def test_fill_objects_takes_the_nearest_background_pixel_of_the_row():
    image = torch.arange(1.0, 8.0).view(1, 1, 1, 7).repeat(1, 3, 3, 1)  # every row 1..7
    objects = torch.zeros(1, 3, 7, dtype=torch.bool)
    objects[0, 1, 3] = True  # dilated: columns 2-4 of every row are hidden
    filled = fill_objects(image, objects)
    assert filled[0, 0, 1].tolist() == [1, 2, 2, 2, 6, 6, 7]  # left neighbour first at equal distance
    assert not (filled[0, :, :, 2:5] == image[0, :, :, 2:5]).all()


def test_fill_objects_falls_back_to_columns_when_a_row_is_hidden():
    image = torch.arange(5.0).view(1, 1, 5, 1).expand(1, 3, 5, 4).clone()  # row r holds r
    objects = torch.zeros(1, 5, 4, dtype=torch.bool)
    objects[0, 2, :] = True  # rows 1-3 hidden after dilation
    filled = fill_objects(image, objects)
    assert filled[0, 0, :, 0].tolist() == [0, 0, 0, 4, 4]


def test_paste_objects_composes_and_keeps_the_object_guide():
    objects = torch.full((1, 3, 2, 2), 5.0)
    backgrounds = torch.zeros(1, 3, 2, 2)
    guide = torch.tensor([[[[1, 0], [0, 255]], [[0, 0], [0, 0]]]], dtype=torch.uint8)
    pasted, pasted_guide = paste_objects(objects, guide, backgrounds)
    assert pasted[0, 0].tolist() == [[5.0, 0.0], [0.0, 0.0]]
    assert torch.equal(pasted_guide, guide)


def test_paste_objects_rejects_an_image_without_object_pixels():
    empty = torch.full((2, 1, 2, 2), 255, dtype=torch.uint8)
    empty[0, 0, 0, 0] = 1
    with pytest.raises(ValueError, match=r"cannot paste images \[1\]"):
        paste_objects(torch.zeros(2, 3, 2, 2), empty, torch.zeros(2, 3, 2, 2))
    with pytest.raises(ValueError, match="uint8"):
        object_pixels(empty.float())


def test_shift_objects_moves_object_and_guide_together_inside_the_frame():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, 10, 12, generator=g).expand(200, 3, 10, 12).clone()
    guides = torch.zeros(200, 2, 10, 12, dtype=torch.uint8)
    guides[:, 1, 2:5, 0:3] = 1  # a 3x3 object touching the left border
    shifted, shifted_guides = shift_objects(images, guides, g)
    offsets = set()
    for img, guide in zip(shifted, shifted_guides):
        obj = object_pixels(guide[None])[0]
        assert obj.sum() == 9  # nothing wrapped or was cut at the border
        (r, c) = torch.nonzero(obj)[0].tolist()
        assert torch.equal(img[:, r : r + 3, c : c + 3], images[0, :, 2:5, 0:3])  # the pixels moved with their mask
        offsets.add((r - 2, c))
    assert {dy for dy, _ in offsets} == set(range(-2, 6)) and {dx for _, dx in offsets} == set(range(0, 10))
    with pytest.raises(ValueError, match=r"cannot shift images \[0\]"):
        shift_objects(images[:1], torch.zeros(1, 2, 10, 12, dtype=torch.uint8))


def test_pairs_have_disjoint_labels():
    labels = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
    pairs = counterfactual_pairs(labels, 200, torch.Generator().manual_seed(0))
    assert pairs.shape == (200, 2)
    assert not (labels[pairs[:, 0]] * labels[pairs[:, 1]]).any()
    assert {tuple(p) for p in pairs.tolist()} == {(0, 2), (2, 0), (1, 2), (2, 1), (3, 2), (2, 3)}
    assert counterfactual_pairs(labels[[0, 3]], 5).numel() == 0


def _l_shape(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` 12x12 images holding one L-shaped object (rows 2-7, columns 3-6; left-right asymmetric)
    whose colour is its column, on a background of -1; guides in channel 1."""
    images = torch.full((n, 3, 12, 12), -1.0)
    guides = torch.zeros(n, 2, 12, 12, dtype=torch.uint8)
    guides[:, 1, 2:8, 3:5] = 1
    guides[:, 1, 6:8, 5:7] = 1
    columns = torch.arange(12.0).expand(12, 12)
    images[:, :, guides[0, 1].bool()] = columns[guides[0, 1].bool()]
    return images, guides


def test_jitter_objects_flips_the_object_and_its_guide_together():
    images, guides = _l_shape(64)
    out, out_guides = jitter_objects(images, guides, torch.Generator().manual_seed(0), scale=(1.0, 1.0))
    mask = object_pixels(guides[:1])[0]
    mirrored = torch.zeros_like(mask)
    mirrored[:, 3:7] = mask[:, 3:7].flip(-1)  # the box spans columns 3-6: column c goes to 9 - c
    columns = torch.arange(12.0).expand(12, 12)
    flipped = 0
    for img, guide in zip(out, out_guides):
        obj = object_pixels(guide[None])[0]
        if torch.equal(obj, mask):
            assert torch.equal(img[0, obj], columns[obj])
        else:
            assert torch.equal(obj, mirrored) and torch.equal(img[0, obj], 9.0 - columns[obj])
            flipped += 1
    assert 16 < flipped < 48  # each image flipped with probability 1/2


def test_jitter_objects_rescales_within_the_frame_and_keeps_the_guide_on_the_object():
    images, guides = _l_shape(200)
    out, out_guides = jitter_objects(images, guides, torch.Generator().manual_seed(1), scale=(0.5, 2.5), flip=False)
    areas = object_pixels(out_guides).flatten(1).sum(1).float()
    assert areas.min() < 16 * 0.5 and areas.max() > 16 * 3  # shrunk and grown (the object has 16 pixels)
    for img, guide in zip(out, out_guides):
        obj = object_pixels(guide[None])[0]
        assert obj.any() and (img[:, obj] >= 3.0 - 1e-5).all()  # the guide marks object colours only
        rows, cols = torch.nonzero(obj, as_tuple=True)
        assert rows.max() - rows.min() + 1 <= 12 and cols.max() - cols.min() + 1 <= 12
    with pytest.raises(ValueError, match=r"cannot jitter images \[0\]"):
        jitter_objects(images[:1], torch.zeros(1, 2, 12, 12, dtype=torch.uint8))
    with pytest.raises(ValueError, match="scale must be"):
        jitter_objects(images, guides, scale=(1.5, 1.0))


def test_bank_jitter_changes_what_it_names():
    images, guides = _l_shape(2)
    images[1, 1] += 20.0  # channels differ: a permutation shows
    labels = torch.tensor([[1.0, 0], [0, 1]])
    drawn = {}
    for jitter in ("none", "colour", "geometry", "all"):
        torch.manual_seed(0)
        bank = CounterfactualBank(jitter=jitter)
        bank.add(images, guides, labels)
        pasted, pasted_labels, pasted_guides = bank.draw(64)
        obj = object_pixels(pasted_guides)
        areas = set(obj.flatten(1).sum(1).tolist())
        # the channel order of each pasted object: the source image's channel means, sorted or not
        orders = {tuple(p[:, o].mean(1).argsort().tolist()) for p, o in zip(pasted, obj)}
        drawn[jitter] = (len(areas), len(orders))
    assert drawn["none"] == (1, 2)  # 16 pixels; the two source images' own channel orders
    assert drawn["colour"][0] == 1 and drawn["colour"][1] > 2
    assert drawn["geometry"][0] > 3 and drawn["geometry"][1] == 2
    assert drawn["all"][0] > 3 and drawn["all"][1] > 2
    with pytest.raises(ValueError, match="jitter must be one of"):
        CounterfactualBank(jitter="hue")


def test_bank_skips_images_without_objects_and_draws_other_backgrounds():
    bank = CounterfactualBank(capacity=4)
    images = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(3)])
    guides = torch.zeros(3, 2, 4, 4, dtype=torch.uint8)
    guides[0, 0, :2, :2] = 1
    guides[2, 1, 2:, 2:] = 1  # image 1 marks no object: skipped
    labels = torch.tensor([[1.0, 0], [1, 0], [0, 1]])
    assert bank.add(images, guides, labels) == 2
    pasted, pasted_labels, pasted_guides = bank.draw(10)
    assert pasted.shape == (10, 3, 4, 4)
    for img, lab, g in zip(pasted, pasted_labels, pasted_guides):
        obj = object_pixels(g[None])[0]
        source, other = (0.0, 2.0) if lab[0] == 1 else (2.0, 0.0)
        assert (img[:, obj] == source).all() and (img[:, ~obj] == other).all()
    single = CounterfactualBank()
    single.add(images[:1], guides[:1], labels[:1])
    assert single.draw(4) is None


def _biased_batch(n: int, conflicting: bool, seed: int):
    """Class = colour of a 3x3 square (red / green) at a random place; the rest of the 8x8 image is
    blue for class 0 and yellow for class 1 (swapped when ``conflicting``). Every image has its mask."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    bg_class = 1 - y if conflicting else y
    images = torch.zeros(n, 3, 8, 8)
    images[:, 2] = (bg_class == 0).float()[:, None, None]
    images[:, :2] = (bg_class == 1).float()[:, None, None, None].expand(n, 2, 8, 8)
    guide = torch.zeros(n, 2, 8, 8, dtype=torch.uint8)
    for i in range(n):
        r, c = torch.randint(0, 6, (2,), generator=g).tolist()
        images[i, :, r : r + 3, c : c + 3] = 0.0
        images[i, int(y[i]), r : r + 3, c : c + 3] = 1.0
        guide[i, int(y[i]), r : r + 3, c : c + 3] = 1
    labels = torch.nn.functional.one_hot(y, 2).float()
    return images + 0.1 * torch.randn(images.shape, generator=g), labels, guide


def _trained_on_biased_batches(**gain_kwargs) -> SmallCNN:
    """A SmallCNN after 40 steps of L_cl only (alpha = omega_e = 0) on biased, fully annotated batches."""
    torch.manual_seed(0)
    model = SmallCNN(num_classes=2, width=4)
    fixed_weight = {"counterfactual_weight": 4.0, "counterfactual_eta": 0.0}  # what these tests were sized for
    gain = GAIN(model, "features", method="gainext", omega_e=0.0, alpha=0.0, **{**fixed_weight, **gain_kwargs})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(40):
        images, labels, guide = _biased_batch(32, False, step)
        out = gain(images, labels, guide, torch.ones(32, dtype=torch.bool), mining=False)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model.eval()


def _conflicting_accuracy(guidance: str) -> float:
    model = _trained_on_biased_batches(guidance=guidance, counterfactuals=32)
    images, labels, _ = _biased_batch(200, True, 999)
    with torch.no_grad():
        return (model(images).argmax(1) == labels.argmax(1)).float().mean().item()


def test_counterfactual_images_remove_a_background_bias():
    # the same objective (L_cl only: alpha = omega_e = 0) with and without the pasted images
    assert _conflicting_accuracy("scaled") < 0.3
    assert _conflicting_accuracy("counterfactual") > 0.8


def test_gain_appends_counterfactuals_and_reports_batch_scores():
    images, labels, guide = _biased_batch(8, False, 0)
    gain = GAIN(
        SmallCNN(num_classes=2, width=4), "features", method="gainext", guidance="counterfactual", counterfactuals=5
    )
    out = gain(images, labels, guide, torch.ones(8, dtype=torch.bool))
    assert out.counterfactual.shape == (5, 3, 8, 8)
    assert out.scores.shape == (8, 2)
    assert int(out.pair_index.max()) >= 8  # the counterfactual images have attention pairs too
    with pytest.raises(ValueError, match="counterfactuals must be >= 0"):
        GAIN(SmallCNN(num_classes=2, width=4), "features", guidance="counterfactual", counterfactuals=-1)


@pytest.mark.parametrize(("batch", "expected"), [(8, 4), (7, 4)])
def test_the_default_count_is_half_the_batch(batch, expected):
    images, labels, guide = _biased_batch(batch, False, 0)
    gain = GAIN(SmallCNN(num_classes=2, width=4), "features", method="gainext", guidance="counterfactual")
    assert gain.counterfactuals is None and gain.counterfactual_count(batch) == expected
    assert gain.counterfactual_count(1) == 1 and gain.counterfactual_count(64) == 32
    gain(images, labels, guide, torch.ones(batch, dtype=torch.bool))  # fills the bank
    out = gain(images, labels, guide, torch.ones(batch, dtype=torch.bool))
    assert out.counterfactual.shape[0] == expected


@pytest.mark.parametrize("added", [0, 3, 11])  # empty, part-filled, wrapped round its capacity of 4
def test_a_restored_bank_draws_what_the_saved_one_draws(added):
    images, labels, guide = _biased_batch(max(added, 1), False, 0)
    saved = CounterfactualBank(capacity=4, jitter="colour")
    for i in range(added):
        saved.add(images[i : i + 1], guide[i : i + 1], labels[i : i + 1])
    state = saved.state_dict()
    assert saved.nbytes == sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    assert state["size"] == min(added, 4) and all(t.device.type == "cpu" for t in state.values() if torch.is_tensor(t))
    restored = CounterfactualBank(capacity=4, jitter="colour")
    restored.load_state_dict(state)
    assert (restored.size, restored.next) == (saved.size, saved.next)
    for bank in (saved, restored):  # the next write lands in the same row of both
        bank.add(images[:1], guide[:1], labels[:1])
    torch.manual_seed(5)
    expected = saved.draw(6)
    torch.manual_seed(5)
    drawn = restored.draw(6)
    assert (expected is None) == (drawn is None)
    if expected is not None:
        for a, b in zip(expected, drawn):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="holds 4 images, this one 8"):
        CounterfactualBank(capacity=8).load_state_dict(state)


def test_group_dro_moves_the_counterfactual_weight_by_the_loss_gap():
    images, labels, guide = _biased_batch(8, False, 0)
    model = SmallCNN(num_classes=2, width=4)
    gain = GAIN(
        model, "features", method="gainext", counterfactual_weight=2.0, counterfactual_eta=0.5, alpha=0.0, omega_e=0.0
    )
    has = torch.ones(8, dtype=torch.bool)
    gain(images, labels, guide, has)  # fills the bank
    start = gain.counterfactual_log_weight.item()
    scores = []
    hook = model.register_forward_hook(lambda module, args, out: scores.append((args[0].shape[0], out.detach())))
    out = gain(images, labels, guide, has)
    hook.remove()
    (rows, all_scores), k = scores[0], out.counterfactual.shape[0]
    assert rows == 8 + k and gain.counterfactual_log_weight.item() != start
    # L_cl = (sum_batch l_i + w sum_cf l_j) / (8 + w k) with the moved weight w; the move is eta times the gap
    weight = gain.counterfactual_log_weight.exp()
    batch_loss = classification_losses(all_scores[:8], labels, False)
    cf_mean = (out.loss_cl * (8 + weight * k) - batch_loss.sum()) / (weight * k)
    expected = 0.5 * (cf_mean - batch_loss.mean())
    torch.testing.assert_close(gain.counterfactual_log_weight - start, expected, rtol=1e-4, atol=1e-5)
    gain.eval()
    frozen = gain.counterfactual_log_weight.clone()
    gain(images, labels, guide, has)  # evaluation mode: the weight does not move
    assert torch.equal(gain.counterfactual_log_weight, frozen)
    fixed = GAIN(
        SmallCNN(num_classes=2, width=4), "features", method="gainext", counterfactual_weight=2.0, counterfactual_eta=0
    )
    fixed(images, labels, guide, has)
    fixed(images, labels, guide, has)
    assert fixed.counterfactual_log_weight.exp().item() == pytest.approx(2.0)  # eta 0: fixed
    with pytest.raises(ValueError, match="counterfactual_eta must be >= 0"):
        GAIN(SmallCNN(num_classes=2, width=4), "features", counterfactual_eta=-1.0)


def test_group_dro_weight_follows_the_gap_up_to_its_bound():
    gain = GAIN(
        SmallCNN(num_classes=2, width=4),
        "features",
        method="gainext",
        counterfactual_weight=1.0,
        counterfactual_eta=0.5,
        counterfactual_weight_max=4.0,
    )
    losses = torch.tensor([1.0, 1.0, 1.5, 1.5, 1.5])  # two batch images, three counterfactual ones: gap 0.5
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    weights = gain._counterfactual_weights(losses, labels, 2)
    torch.testing.assert_close(weights, torch.tensor([1.0, 1.0, *[math.exp(0.25)] * 3]))
    for _ in range(20):  # a persistent gap raises the weight to its bound and no further
        weights = gain._counterfactual_weights(losses, labels, 2)
    torch.testing.assert_close(weights[2:], torch.full((3,), 4.0))
    easier = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])  # counterfactual images easier: the weight falls
    assert gain._counterfactual_weights(easier, labels, 2)[2] < 4.0
    # an object-free background (no class) counts in L_cl but not in the gap: here only it is hard
    start = gain.counterfactual_log_weight.clone()
    backgrounds = labels.clone()
    backgrounds[4] = 0.0
    gain._counterfactual_weights(torch.tensor([1.0, 1.0, 1.0, 1.0, 9.0]), backgrounds, 2)
    torch.testing.assert_close(gain.counterfactual_log_weight, start)
    only_backgrounds = torch.zeros_like(labels)
    only_backgrounds[:2] = labels[:2]
    gain._counterfactual_weights(torch.tensor([1.0, 1.0, 9.0, 9.0, 9.0]), only_backgrounds, 2)
    torch.testing.assert_close(gain.counterfactual_log_weight, start)  # no pasted image: no step
    with torch.no_grad():  # not while evaluating
        gain._counterfactual_weights(losses, labels, 2)
    torch.testing.assert_close(gain.counterfactual_log_weight, start)
    with pytest.raises(ValueError, match=r"counterfactual_weight_max \(2.0\) is below counterfactual_weight \(4.0\)"):
        GAIN(
            SmallCNN(num_classes=2, width=4),
            "features",
            counterfactual_weight=4.0,
            counterfactual_eta=0.1,
            counterfactual_weight_max=2.0,
        )
    fixed = GAIN(  # a fixed weight has no bound to respect
        SmallCNN(num_classes=2, width=4),
        "features",
        counterfactual_weight=8.0,
        counterfactual_eta=0.0,
        counterfactual_weight_max=4.0,
    )
    assert fixed._counterfactual_weights(losses, labels, 2)[2] == 8.0


def test_a_state_saved_before_the_group_dro_loads_strictly_and_keeps_the_weight():
    gain = GAIN(SmallCNN(num_classes=2, width=4), "features", counterfactual_weight=2.0)
    old = {k: v for k, v in gain.state_dict().items() if k != "counterfactual_log_weight"}
    gain.counterfactual_log_weight.fill_(5.0)
    gain.load_state_dict(old)  # strict
    assert gain.counterfactual_log_weight.item() == pytest.approx(5.0)  # kept: nothing in the state replaces it
    fresh = GAIN(SmallCNN(num_classes=2, width=4), "features", counterfactual_weight=2.0)
    fresh.load_state_dict(gain.state_dict())
    assert fresh.counterfactual_log_weight.item() == pytest.approx(5.0)  # saved and restored with the objective


def test_bank_draws_object_free_backgrounds_with_no_label():
    bank = CounterfactualBank(capacity=4)
    assert bank.draw_backgrounds(3) is None  # empty bank
    images = torch.stack([torch.full((3, 4, 4), float(i)) for i in range(2)])
    images[0, :, :2, :2] = 9.0  # the object of image 0
    images[1, :, 2:, 2:] = 9.0
    guides = torch.zeros(2, 2, 4, 4, dtype=torch.uint8)
    guides[0, 0, :2, :2] = 1
    guides[1, 1, 2:, 2:] = 1
    bank.add(images, guides, torch.tensor([[1.0, 0], [0, 1]]))
    backgrounds, labels, bg_guides = bank.draw_backgrounds(6)
    assert backgrounds.shape == (6, 3, 4, 4) and not (backgrounds == 9.0).any()  # objects removed
    assert set(backgrounds.flatten(1).amax(1).tolist()) <= {0.0, 1.0}
    assert not labels.any() and labels.shape == (6, 2)
    assert bg_guides.shape == (6, 2, 4, 4) and not bg_guides.any()
    assert bank.draw_backgrounds(0) is None


def test_unlabelled_rows_are_trained_towards_the_uniform_prediction():
    scores = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.1, -2.0]], requires_grad=True)
    labels = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    per_image = torch.stack([classification_loss(scores[i : i + 1], labels[i : i + 1], False) for i in range(2)])
    assert torch.allclose(per_image[0], torch.nn.functional.cross_entropy(scores[:1], torch.tensor([1])))
    assert torch.allclose(per_image[1], -torch.log_softmax(scores[1], 0).mean())
    (grad,) = torch.autograd.grad(classification_loss(scores[1:], labels[1:], False), scores)
    assert torch.allclose(grad[1], torch.softmax(scores[1], 0) - 1 / 3)  # zero only at the uniform prediction
    multi = classification_loss(scores[1:], labels[1:], True)  # multi-label: every class absent
    assert torch.allclose(multi, torch.nn.functional.softplus(scores[1]).mean())


def test_gain_appends_object_free_backgrounds_weighted_like_the_pasted_images():
    images, labels, guide = _biased_batch(8, False, 0)
    gain = GAIN(
        SmallCNN(num_classes=2, width=4),
        "features",
        method="gainext",
        guidance="counterfactual",
        counterfactuals=5,
        counterfactual_backgrounds=3,
        alpha=0.0,
        omega_e=0.0,
    )
    out = gain(images, labels, guide, torch.ones(8, dtype=torch.bool))
    assert out.counterfactual.shape == (8, 3, 8, 8)  # 5 pasted, then 3 object-free
    assert out.scores.shape == (8, 2) and int(out.pair_index.max()) < 13  # backgrounds make no pairs
    with pytest.raises(ValueError, match="counterfactual_backgrounds must be >= 0"):
        GAIN(SmallCNN(num_classes=2, width=4), "features", guidance="counterfactual", counterfactual_backgrounds=-1)


def _background_evidence(backgrounds: int) -> float:
    """Mean top softmax probability on object-free images of the biased data after training."""
    model = _trained_on_biased_batches(
        guidance="counterfactual", counterfactuals=8, counterfactual_backgrounds=backgrounds
    )
    images, _, guide = _biased_batch(200, False, 999)
    empty = fill_objects(images, object_pixels(guide))
    with torch.no_grad():
        return torch.softmax(model(empty), 1).amax(1).mean().item()


def test_object_free_backgrounds_remove_the_evidence_of_the_context():
    # same objective and pasted images, with and without the object-free backgrounds
    assert _background_evidence(0) > 0.8  # the context alone still names a class
    assert _background_evidence(8) < 0.65


def test_an_evaluation_batch_without_guides_is_scored_alone():
    """GAIN(guidance="counterfactual") with mining=False and no guides (a validation step) adds no image."""
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, width=4).eval()
    images, labels = torch.rand(4, 3, 16, 16), torch.eye(3)[[0, 1, 2, 0]]
    out = GAIN(model, "features", method="gainext", guidance="counterfactual")(images, labels, mining=False)
    assert out.scores.shape == (4, 3)
    torch.testing.assert_close(out.loss_cl, torch.nn.functional.cross_entropy(model(images), labels))
    with pytest.raises(ValueError, match="needs guide and has_guide"):  # a training step still needs its guides
        GAIN(model, "features", method="gainext", guidance="counterfactual")(images, labels)
