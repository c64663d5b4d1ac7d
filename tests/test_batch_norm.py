"""Batch-norm statistics recomputed with the trained weights (gainx.training.batch_norm); the trainer's use of
them is tested in test_training.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gainx.training.batch_norm import recompute_batch_norm_statistics, recomputes_statistics


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4, momentum=0.01), nn.Flatten())


def _batches(count: int, size: int = 6) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(size, 3, 7, 5) * (i + 1) + i for i in range(count)]


def _expected(model: nn.Module, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over batches of the batch mean and unbiased variance of the BN input."""
    with torch.no_grad():
        feats = [model[1](model[0](b)).transpose(0, 1).flatten(1) for b in batches]  # (C, N*H*W) each
    return torch.stack([f.mean(1) for f in feats]).mean(0), torch.stack([f.var(1) for f in feats]).mean(0)


@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_statistics_are_the_mean_of_the_batch_statistics(mode):
    model, batches = _bn_model(), _batches(3)
    model.train(mode == "train")
    if mode == "mixed":
        model[2].train()  # a BN layer in train mode inside an eval model, and the other way round
        model[1].train()
    modes = [m.training for m in model.modules()]
    bn = model[2]
    assert recompute_batch_norm_statistics(model, batches) == 3
    mean, var = _expected(model, batches)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-5)
    assert bn.num_batches_tracked.item() == 3 and bn.momentum == 0.01  # the momentum is restored
    assert [m.training for m in model.modules()] == modes  # and every module's mode


def test_at_most_max_batches_are_used():
    model, batches = _bn_model(), _batches(5)
    assert recompute_batch_norm_statistics(model, iter(batches), max_batches=2) == 2
    mean, var = _expected(model, batches[:2])
    torch.testing.assert_close(model[2].running_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[2].running_var, var, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="max_batches must be at least 1"):
        recompute_batch_norm_statistics(model, batches, max_batches=0)


class _Fails:
    def __iter__(self):
        yield _batches(1)[0]
        raise OSError("image file vanished")


@pytest.mark.parametrize(("images", "error", "match"), [([], ValueError, "got none"), (_Fails(), OSError, "vanished")])
def test_statistics_are_kept_when_no_image_or_a_failure_comes(images, error, match):
    model = _bn_model()
    bn = model[2]
    bn.running_mean.fill_(3.0)
    bn.running_var.fill_(2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        recompute_batch_norm_statistics(model, images)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert bn.momentum == 0.01


def test_a_model_without_batch_norm_is_untouched():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recompute_batch_norm_statistics(model, _batches(2)) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_which_runs_recompute():
    assert recomputes_statistics("auto", "pretrained") and recomputes_statistics("recompute", None)
    assert not recomputes_statistics("auto", None) and not recomputes_statistics("running", "start.pt")
    with pytest.raises(ValueError, match="bn_statistics must be one of"):
        recomputes_statistics("precise", None)
