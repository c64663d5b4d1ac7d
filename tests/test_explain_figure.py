"""The attention figure explains each run's own prediction (gainx.explain)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gainx.explain import explained_classes


class Always(nn.Module):
    """Predicts class ``k`` for every image."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((x.shape[0],), self.k), 3).float()


def test_the_predicted_class_is_explained_not_the_ground_truth():
    labels = torch.tensor([0, 2])
    predicted, shown = explained_classes(Always(1), torch.zeros(2, 3, 4, 4), labels, "predicted")
    assert predicted.tolist() == [1, 1] and shown.tolist() == [1, 1]
    _, shown = explained_classes(Always(1), torch.zeros(2, 3, 4, 4), labels, "ground_truth")
    assert shown.tolist() == [0, 2]
    with pytest.raises(ValueError, match="explain must be one of"):
        explained_classes(Always(1), torch.zeros(2, 3, 4, 4), labels, "gt")
