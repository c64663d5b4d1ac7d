"""gainx.viz: heatmaps and overlays of maps in any floating dtype attention_maps returns (autocast: bfloat16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gainx import viz


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_heatmap_overlay_and_denormalize_take_every_float_dtype(dtype):
    attention = torch.linspace(0, 1, 12).reshape(3, 4)
    want = viz.heatmap(attention.numpy())
    got = viz.heatmap(attention.to(dtype))
    assert got.dtype == np.uint8 and got.shape == (3, 4, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 8  # bfloat16 keeps 8 bits of mantissa
    assert viz.overlay(np.zeros((3, 4, 3), np.uint8), attention.to(dtype)).shape == (3, 4, 3)
    image = torch.zeros(3, 2, 2, dtype=dtype)  # normalized zero -> the mean
    assert (viz.denormalize(image, [0.5, 0.5, 0.5], [0.2, 0.2, 0.2]) == 128).all()
