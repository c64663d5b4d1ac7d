"""The group DRO weight of the counterfactual images under torch.distributed: every rank takes the step of the
global batch (two gloo processes on the CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist
from ddp_helpers import run_ranks  # tests/ is on sys.path under pytest

from gainx.losses import GAIN
from gainx.models import SmallCNN

ETA = 0.5
LABELS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # 2 batch images, 3 pasted
LOSSES = (torch.tensor([1.0, 1.0, 1.5, 1.5, 1.5]), torch.tensor([2.0, 2.0, 2.0, 2.0, 2.0]))  # per rank


def _objective() -> GAIN:
    return GAIN(SmallCNN(num_classes=2, width=4), "features", method="gainext", counterfactual_eta=ETA)


def _worker(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/group", rank=rank, world_size=2)
    try:
        gain = _objective()
        gain._counterfactual_weights(LOSSES[rank], LABELS, 2)  # both ranks draw pasted images
        steps = [gain.counterfactual_log_weight.item()]
        if rank == 0:  # rank 0 draws pasted images, rank 1's bank is empty (no image of its batch has a mask)
            gain._counterfactual_weights(LOSSES[0], LABELS, 2)
        else:
            images = torch.rand(4, 3, 8, 8)
            labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 0, 1]), 2).float()
            guide = torch.zeros(4, 2, 8, 8, dtype=torch.uint8)
            out = gain(images, labels, guide, torch.zeros(4, dtype=torch.bool))
            assert out.counterfactual is None
        steps.append(gain.counterfactual_log_weight.item())
        torch.save(steps, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_rank_takes_the_group_dro_step_of_the_global_batch(tmp_path):
    run_ranks(_worker, str(tmp_path), timeout=120)
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2))
    # first step: pasted images 4.5 + 6.0 over 6, batch images 2.0 + 4.0 over 4: gap 1.75 - 1.5 = 0.25
    # (rank 0 alone would see 0.5, rank 1 alone 0.0)
    assert math.isclose(rank0[0], ETA * 0.25, abs_tol=1e-6) and math.isclose(rank1[0], ETA * 0.25, abs_tol=1e-6)
    # second step: only rank 0 has pasted images (gap 0.5); rank 1, whose bank is still empty, takes the step too
    assert math.isclose(rank0[1], ETA * 0.75, abs_tol=1e-6) and math.isclose(rank1[1], ETA * 0.75, abs_tol=1e-6)


def test_a_single_process_takes_its_own_step():
    gain = _objective()
    gain._counterfactual_weights(LOSSES[0], LABELS, 2)
    assert math.isclose(gain.counterfactual_log_weight.item(), ETA * 0.5, abs_tol=1e-6)
