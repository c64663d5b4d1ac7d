"""load_backbone_weights: a file of the model's architecture loads all but a head of another shape; a file of
another architecture is refused, naming the file, instead of loading a few tensors whose shapes happen to fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from gainx.models import build_model, load_backbone_weights
from gainx.models.registry import classifier_head


@pytest.mark.parametrize(
    ("source", "target", "fit"),
    [
        ("efficientnet_b0", "mobilenet_v3_large", "only 0 of its 172 parameters outside the head 'classifier.3'"),
        ("resnet50", "resnet18", "only 43 of its 60 parameters outside the head 'fc'"),
    ],
)
def test_weights_of_another_arch_are_refused_naming_the_file(tmp_path: Path, source, target, fit) -> None:
    path = tmp_path / f"{source}.pt"
    torch.save(build_model(source, 10).state_dict(), path)
    with pytest.raises(ValueError, match=rf"{source}\.pt: .*another architecture.*{fit} would load"):
        build_model(target, 3, weights=path)


def test_a_file_with_more_layers_than_the_model_is_refused(tmp_path: Path) -> None:
    state = build_model("small_cnn", 3).state_dict()
    path = tmp_path / "deeper.pt"
    torch.save({**state, "features.6.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"deeper\.pt: .*not in the model \['features\.6\.0\.weight'\]"):
        build_model("small_cnn", 3, weights=path)


def test_a_checkpoint_with_another_head_loads_everything_but_the_head(tmp_path: Path) -> None:
    trained = build_model("resnet18", 5)
    path = tmp_path / "five.pt"
    torch.save({"model": trained.state_dict(), "epoch": torch.tensor(3)}, path)  # a gainx checkpoint
    model = build_model("resnet18", 3)
    load_backbone_weights(model, path)
    own, source = model.state_dict(), trained.state_dict()
    assert all(torch.equal(own[k], v) for k, v in source.items() if not k.startswith("fc."))
    assert own["fc.weight"].shape == (3, 512)


def _conv_classifier(num_classes: int) -> nn.Module:
    """A fully convolutional classifier: its last convolution has one output channel per class."""
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, num_classes, 1), nn.AdaptiveAvgPool2d(1))


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18", "mobilenet_v3_small", "efficientnet_b0", "convolutional"])
def test_the_head_is_the_layer_whose_shape_depends_on_the_number_of_classes(arch) -> None:
    def build(n: int) -> nn.Module:
        return _conv_classifier(n) if arch == "convolutional" else build_model(arch, n)

    three, four = build(3).state_dict(), build(4).state_dict()
    differ = {k.rsplit(".", 1)[0] for k in three if three[k].shape != four[k].shape}
    assert differ == {classifier_head(build(3))}
