"""Shared fixtures: tiny models and a tiny decoy data set (generated, never downloaded)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gainx.data import write_decoy
from gainx.models import SmallCNN


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def small_cnn() -> SmallCNN:
    return SmallCNN(num_classes=5, width=8).eval()


@pytest.fixture(scope="session")
def decoy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small decoy benchmark (24x24 images, masks on a quarter of the train split)."""
    return write_decoy(tmp_path_factory.mktemp("decoy"), image_size=24, seed=1, mask_fraction=0.25, train_size=96, test_size=32)
