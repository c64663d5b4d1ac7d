"""Classification and localization metrics on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from gainx.evaluation.metrics import LocalizationMeter, average_precision, cue_mask, mean_average_precision


def test_average_precision_hand_value():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    targets = np.array([1, 0, 1, 0])
    assert average_precision(scores, targets) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert np.isnan(average_precision(scores, np.zeros(4)))
    s = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.1, 0.2]])
    t = torch.tensor([[1, 0], [0, 1], [1, 0]])
    assert mean_average_precision(s, t) == pytest.approx(((1 + 2 / 3) / 2 + 1.0) / 2)


def test_average_precision_ignores_the_order_of_tied_scores():
    scores = np.array([0.5, 0.5, 0.5, 0.5, 0.9, 0.1])
    targets = np.array([1, 0, 0, 1, 1, 0])
    values = set()
    for perm in ([0, 1, 2, 3, 4, 5], [1, 2, 0, 3, 4, 5], [3, 0, 1, 2, 5, 4]):
        ap = average_precision(scores[perm], targets[perm])
        assert ap == pytest.approx(average_precision_score(targets, scores))
        values.add(round(ap, 12))
    assert len(values) == 1
    rng = np.random.default_rng(0)
    s = torch.from_numpy(rng.integers(0, 4, (40, 3)).astype(np.float32))  # many ties
    t = torch.from_numpy(rng.integers(0, 2, (40, 3)))
    expected = np.mean([average_precision_score(t[:, c], s[:, c]) for c in range(3)])
    assert mean_average_precision(s, t) == pytest.approx(expected)


def test_cue_mask_uses_twenty_percent_of_the_peak():
    maps = torch.tensor([[[1.0, 0.19], [0.2, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert cue_mask(maps).tolist() == [[[True, False], [True, False]], [[False, False], [False, False]]]


def test_localization_meter_iou_per_class_and_pointing():
    meter = LocalizationMeter(num_classes=3)
    maps = torch.tensor([[[1.0, 0.5], [0.0, 0.0]], [[0.0, 0.1], [0.0, 1.0]]])
    targets = torch.tensor([[[1, 0], [1, 255]], [[0, 0], [1, 1]]], dtype=torch.uint8)
    meter.update(maps, targets, torch.tensor([0, 2]))
    # class 0: cue {(0,0),(0,1)}, gt {(0,0),(1,0)}, ignore (1,1) -> I=1, U=3; class 2: cue {(1,1)}, gt 2 px -> 1/2
    out = meter.result()
    assert out["miou"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert out["pointing_game"] == 1.0 and out["num_maps"] == 2


def test_localization_meter_leaves_out_maps_with_no_object_pixel():
    """A present class whose target has no object pixel (all background or ignore, e.g. a crowd-only COCO class
    under boxes) has nothing to point at: its map changes neither the IoU nor the pointing game."""
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 0.5], [0.5, 0.5]], [[0.0, 1.0], [0.0, 0.0]]])
    targets = torch.tensor([[[1, 0], [0, 0]], [[255, 255], [255, 255]], [[0, 0], [0, 0]]], dtype=torch.uint8)
    meter = LocalizationMeter(num_classes=2)
    meter.update(maps, targets, torch.tensor([0, 0, 1]))
    out = meter.result()
    assert out["miou"] == pytest.approx(1.0)  # class 0 from its one scorable map; class 1 has none
    assert out["pointing_game"] == 1.0 and out["num_maps"] == 1
    assert out["num_maps_without_object"] == 2
