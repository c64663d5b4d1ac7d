"""Every path that scores a checkpoint feeds it images normalized as in its training (the checkpoint's mean and
std), not the data set's default (ImageNet's): EfficientNet-Lite0 trains on ``(x - 127) / 128``."""

from __future__ import annotations

import json

import pytest
import torch

from gainx.cli import main
from gainx.data import IMAGENET_MEAN, IMAGENET_STD, load_dataset, load_split_for_model
from gainx.evaluation import evaluate
from gainx.experiments.evidence import evidence_split
from gainx.experiments.runner import run_one
from gainx.experiments.specs import BENCHMARKS, QUICK, RunSpec
from gainx.explain import renormalized
from gainx.models import load_model
from gainx.models.registry import INPUT_NORMALIZATION
from gainx.training import TrainConfig
from gainx.training.trainer import train

OWN = ((0.2, 0.3, 0.4), (0.5, 0.6, 0.7))  # a normalization of its own, as efficientnet_lite0 has


@pytest.fixture
def own_normalization(monkeypatch):
    monkeypatch.setitem(INPUT_NORMALIZATION, "small_cnn", OWN)


@pytest.fixture
def checkpoint(decoy_dir, tmp_path, own_normalization):
    cfg = TrainConfig(
        data=str(decoy_dir), out=str(tmp_path / "run"), arch="small_cnn", method="baseline", epochs=1, batch_size=32,
        progress=False, val_split="none",
    )  # fmt: skip
    return train(cfg)


def _seen_means(monkeypatch, module: str) -> list:
    """The normalization of every data set ``module``'s ``evaluate`` is given."""
    seen = []

    def spy(model, dataset, *args, **kwargs):
        seen.append((dataset.mean, dataset.std))
        return evaluate(model, dataset, *args, **kwargs)

    monkeypatch.setattr(module, spy)
    return seen


def test_a_split_is_loaded_as_the_checkpoint_was_trained(checkpoint, decoy_dir):
    _, meta = load_model(checkpoint)
    assert (tuple(meta["mean"]), tuple(meta["std"])) == OWN
    dataset = load_split_for_model(decoy_dir, "test_random", meta)
    assert (dataset.mean, dataset.std) == OWN and list(dataset.image_size) == meta["image_size"]
    default = load_dataset(decoy_dir, "test_random")
    assert (default.mean, default.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert not torch.allclose(dataset[0]["image"], default[0]["image"])


def test_gainx_eval_normalizes_as_the_checkpoint(checkpoint, decoy_dir, monkeypatch, capsys):
    seen = _seen_means(monkeypatch, "gainx.evaluation.evaluate")
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(decoy_dir), "--split", "test_random"]) == 0
    assert seen == [OWN]
    model, meta = load_model(checkpoint)
    expected = evaluate(model, load_split_for_model(decoy_dir, "test_random", meta), meta["target_layer"])
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-3)


def test_experiment_runs_and_their_evidence_normalize_as_the_checkpoint(
    decoy_dir, tmp_path, monkeypatch, own_normalization
):
    seen = _seen_means(monkeypatch, "gainx.experiments.runner.evaluate")
    profile = QUICK.with_overrides(epochs=1)
    result = run_one(RunSpec("baseline", 0), BENCHMARKS["decoy"], decoy_dir, tmp_path / "run", profile)
    assert seen == [OWN] * len(BENCHMARKS["decoy"].splits) and "test_random" in result
    loaded = []
    original = load_split_for_model

    def recording(*args, **kwargs):
        dataset = original(*args, **kwargs)
        loaded.append((dataset.mean, dataset.std))
        return dataset

    monkeypatch.setattr("gainx.experiments.evidence.load_split_for_model", recording)
    evidence_split(tmp_path / "run" / "last.pt", decoy_dir, "test_random")
    assert loaded == [OWN]


def test_figures_renormalize_images_for_each_model():
    torch.manual_seed(0)
    rgb = torch.rand(2, 3, 5, 4)
    imagenet = (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    own = (torch.tensor(OWN[0]).view(1, 3, 1, 1), torch.tensor(OWN[1]).view(1, 3, 1, 1))
    given = (rgb - imagenet[0]) / imagenet[1]
    out = renormalized(given, (IMAGENET_MEAN, IMAGENET_STD), OWN)
    torch.testing.assert_close(out, (rgb - own[0]) / own[1], rtol=1e-5, atol=1e-6)
