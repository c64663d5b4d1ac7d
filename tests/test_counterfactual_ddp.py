"""The group DRO weight of the counterfactual images under torch.distributed: every rank takes the step of the
global batch, in the same place of the step (two gloo processes on the CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist
from ddp_helpers import run_ranks  # tests/ is on sys.path under pytest
from torch import nn

from gainx.losses import GAIN
from gainx.losses.terms import classification_losses
from gainx.models import SmallCNN

ETA = 0.5
LABELS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # 2 batch images, 3 pasted
LOSSES = (torch.tensor([1.0, 1.0, 1.5, 1.5, 1.5]), torch.tensor([2.0, 2.0, 2.0, 2.0, 2.0]))  # per rank


class SyncedNet(nn.Module):
    """A classifier without batch statistics (its per-image losses do not depend on the batch) whose forward
    joins a collective of its own, as a model with SyncBatchNorm does."""

    def __init__(self) -> None:
        super().__init__()
        self.sync = True
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sync:
            dist.all_reduce(torch.ones(3))  # another size than the group DRO's 4 sums: an interleaving fails
        return self.head(self.features(x).mean(dim=(2, 3)))


def _objective(model: nn.Module) -> GAIN:
    return GAIN(model, "features", method="gainext", counterfactual_eta=ETA, counterfactual_jitter="none")


def _loss_sums(model: SyncedNet, images, labels, out) -> torch.Tensor:
    """(pasted loss, pasted count, batch loss, batch count) of one step, computed again from its images."""
    model.sync = False  # this rank's own forward passes
    with torch.no_grad():
        batch = classification_losses(model(images), labels, False)
        if out.counterfactual is None:
            return torch.tensor([0.0, 0.0, batch.sum().item(), len(batch)])
        pasted = out.pair_index >= len(images)
        pasted_labels = nn.functional.one_hot(out.pair_class[pasted], 2).float()
        extra = classification_losses(model(out.counterfactual), pasted_labels, False)
    return torch.tensor([extra.sum().item(), len(extra), batch.sum().item(), len(batch)])


def _worker(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/group", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = SyncedNet()
        gain = _objective(model)
        gain._counterfactual_weights(LOSSES[rank], LABELS, 2)  # both ranks draw pasted images
        steps = [gain.counterfactual_log_weight.item()]
        # a step through forward; rank 0 stores masked images and draws pasted ones, rank 1's bank stays empty
        torch.manual_seed(1 + rank)
        images = torch.rand(4, 3, 8, 8)
        labels = nn.functional.one_hot(torch.tensor([0, 1, 0, 1]), 2).float()
        guide = torch.zeros(4, 2, 8, 8, dtype=torch.uint8)
        guide[torch.arange(4), labels.argmax(1), 2:6, 2:6] = 1
        has_guide = torch.full((4,), rank == 0)
        out = gain(images, labels, guide, has_guide)
        assert (out.counterfactual is None) == (rank == 1)
        steps.append(gain.counterfactual_log_weight.item())
        torch.save({"steps": steps, "sums": _loss_sums(model, images, labels, out)}, Path(folder) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_rank_takes_the_group_dro_step_of_the_global_batch(tmp_path):
    run_ranks(_worker, str(tmp_path), timeout=120)
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    # first step: pasted images 4.5 + 6.0 over 6, batch images 2.0 + 4.0 over 4: gap 1.75 - 1.5 = 0.25
    # (rank 0 alone would see 0.5, rank 1 alone 0.0)
    for rank in ranks:
        assert math.isclose(rank["steps"][0], ETA * 0.25, abs_tol=1e-6)
    # second step: only rank 0 has pasted images; rank 1, whose bank is empty, takes the same step, and its batch
    # counts in the global batch
    pasted_loss, pasted_count, batch_loss, batch_count = sum(rank["sums"] for rank in ranks)
    assert pasted_count > 0 and batch_count == 8
    expected = ETA * 0.25 + ETA * (pasted_loss / pasted_count - batch_loss / batch_count).item()
    for rank in ranks:
        assert math.isclose(rank["steps"][1], expected, abs_tol=1e-5)


def test_a_single_process_takes_its_own_step():
    gain = _objective(SmallCNN(num_classes=2, width=4))
    gain._counterfactual_weights(LOSSES[0], LABELS, 2)
    assert math.isclose(gain.counterfactual_log_weight.item(), ETA * 0.5, abs_tol=1e-6)
