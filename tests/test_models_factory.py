"""Models from any import path (package.module:factory, timm:<name>), their checkpoints, and default target layers."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from checkpoint_helpers import checkpoint_state  # tests/ is on sys.path under pytest
from torch import nn

from gainx.cli import build_parser
from gainx.models import SmallCNN, build_model, default_target_layer, load_model
from gainx.models.target_layer import find_target_layer

SMALL = "gainx.models.small_cnn:SmallCNN"


def test_factory_spec_with_kwargs_and_num_classes() -> None:
    model = build_model(SMALL, 5, model_kwargs={"width": 4})
    assert isinstance(model, SmallCNN) and model.fc.out_features == 5 and model.fc.in_features == 16
    resnet = build_model("torchvision.models:resnet18", 3)
    assert isinstance(resnet, torchvision.models.ResNet) and resnet.fc.out_features == 3
    given = build_model("torchvision.models:resnet18", 3, model_kwargs={"num_classes": 6})  # the kwargs win
    assert given.fc.out_features == 6


def _no_num_classes() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def _not_a_model() -> str:
    return "model"


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("no_such_package_x.models:net", None, "cannot import 'no_such_package_x.models'"),
        ("torchvision.models:resnet999", None, "torchvision.models has no model builder 'resnet999'"),
        (f"{__name__}:SMALL", None, "'SMALL' is a str, not a class or function returning a model"),
        (f"{__name__}:_not_a_model", None, "returned a str, not a torch.nn.Module"),
        (SMALL, {"width": (4, 4)}, "must be JSON values"),
        (SMALL, {"depth": 3}, "cannot be built with keyword arguments"),
        ("resnet18", {"width": 4}, "built-in arch 'resnet18' takes no model keyword arguments"),
        ("resnet1800", None, "'timm:<name>' or 'package.module:factory'"),
    ],
)
def test_factory_errors_name_the_problem(spec: str, kwargs: dict | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(spec, 3, model_kwargs=kwargs)


def test_factory_without_num_classes_is_called_without_it() -> None:
    assert build_model(f"{__name__}:_no_num_classes", 2)[-1].out_features == 2


def test_timm_spec_without_timm_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ValueError, match="needs timm: pip install timm"):
        build_model("timm:resnet18", 3)


def test_timm_spec_builds_without_download() -> None:
    pytest.importorskip("timm")
    model = build_model("timm:resnet10t", 4, model_kwargs={"drop_rate": 0.1}).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(ValueError, match="timm has no architecture 'resnet_nope'"):
        build_model("timm:resnet_nope", 3)


def _downloading_builders() -> list[str]:
    """Specs of the torchvision builders whose ``weights`` or ``weights_backbone`` default is not ``None``."""
    specs = []
    for name in torchvision.models.list_models():
        builder = torchvision.models.get_model_builder(name)
        params = inspect.signature(builder).parameters
        if any(params[p].default is not None for p in ("weights", "weights_backbone") if p in params):
            specs.append(f"{builder.__module__}:{builder.__name__}")
    return specs


DOWNLOADING_BUILDERS = _downloading_builders()


@pytest.fixture
def no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to fetch torchvision weights raises."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


@pytest.mark.parametrize("spec", ["torchvision.models.detection:fasterrcnn_resnet50_fpn", *DOWNLOADING_BUILDERS])
def test_torchvision_builders_never_download(no_downloads, spec: str) -> None:
    """Detection and segmentation builders default to ImageNet backbone weights: a spec builds without them
    (on the meta device: shapes only, so all of them take seconds)."""
    assert "torchvision.models.detection.faster_rcnn:fasterrcnn_resnet50_fpn" in DOWNLOADING_BUILDERS
    with torch.device("meta"):
        model = build_model(spec, 3)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")
def test_asking_for_weights_still_reaches_the_builder(no_downloads) -> None:
    """Weights the keyword arguments ask for (by their current or legacy name) are not overridden."""
    for kwargs in ({"weights_backbone": "DEFAULT"}, {"pretrained_backbone": True}):
        with pytest.raises(AssertionError, match="a download was attempted"), torch.device("meta"):
            build_model("torchvision.models.segmentation:lraspp_mobilenet_v3_large", 3, model_kwargs=kwargs)


def test_checkpoint_of_a_builder_with_backbone_weights_loads_without_download(no_downloads, tmp_path: Path) -> None:
    spec = "torchvision.models.segmentation:lraspp_mobilenet_v3_large"
    model = torchvision.models.segmentation.lraspp_mobilenet_v3_large(num_classes=3, weights_backbone=None).eval()
    loaded, meta = load_model(_checkpoint(tmp_path / "lraspp.pt", model, spec, model_kwargs={}))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["out"], model(x)["out"])


def _checkpoint(path: Path, model: nn.Module, arch: str, **extra) -> Path:
    state = checkpoint_state(model, arch, **extra)
    torch.save(state, path)
    return path


def test_checkpoint_records_the_factory_and_reimports_it(tmp_path: Path) -> None:
    model = build_model(SMALL, 3, model_kwargs={"width": 4}).eval()
    path = _checkpoint(tmp_path / "factory.pt", model, SMALL, model_kwargs={"width": 4})
    loaded, meta = load_model(path, model=SMALL)
    assert meta["arch"] == SMALL and meta["model_kwargs"] == {"width": 4}
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_checkpoint_of_the_old_format_loads(tmp_path: Path) -> None:
    model = SmallCNN(3).eval()
    loaded, meta = load_model(_checkpoint(tmp_path / "old.pt", model, "small_cnn"))  # no model_kwargs entry
    assert isinstance(loaded, SmallCNN) and meta["model_kwargs"] == {}


def test_checkpoint_whose_weights_do_not_fit_the_factory(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "bad.pt", SmallCNN(3, width=8), SMALL, model_kwargs={"width": 4})
    with pytest.raises(ValueError, match="the weights do not fit 'gainx.models.small_cnn:SmallCNN'"):
        load_model(path, model=SMALL)


@pytest.mark.parametrize(
    ("name", "layer"),
    [("resnet18", "layer4"), ("squeezenet1_1", "classifier.2"), ("mobilenet_v3_small", "features")],
)
def test_default_target_layer_is_the_last_feature_map(name: str, layer: str) -> None:
    model = getattr(torchvision.models, name)(num_classes=3).train()
    assert default_target_layer(f"torchvision.models:{name}", model, (64, 64)) == layer
    assert model.training  # mode restored


def test_default_target_layer_of_timm_models() -> None:
    pytest.importorskip("timm")
    for name, layer in [("efficientnet_b0", "bn2"), ("regnetx_002", "s4")]:
        assert find_target_layer(build_model(f"timm:{name}", 3), (64, 64)) == layer


def test_default_target_layer_errors() -> None:
    with pytest.raises(ValueError, match="no submodule returning a \\(N, C, h, w\\) feature map"):
        find_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)), (8, 8))
    with pytest.raises(ValueError, match="give the model to search, or a target layer"):
        default_target_layer(SMALL)
    assert default_target_layer("small_cnn") == "features"


def test_cli_model_and_kwargs_flags() -> None:
    base = ["train", "--data", "d", "--out", "o"]
    args = build_parser().parse_args([*base, "--model", "timm:resnet10t", "--model-kwargs", '{"drop_rate": 0.1}'])
    assert args.arch == "timm:resnet10t" and args.model_kwargs == {"drop_rate": 0.1}
    assert build_parser().parse_args(base).model_kwargs == {}
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--model-kwargs", "[1, 2]"])


def test_training_a_factory_model_records_it_and_says_the_target_layer(decoy_dir, tmp_path, capsys) -> None:
    from gainx.training import TrainConfig
    from gainx.training.trainer import train

    cfg = TrainConfig(
        data=str(decoy_dir), out=str(tmp_path), arch=SMALL, model_kwargs={"width": 4}, method="baseline", epochs=1
    )
    cfg.progress = False
    path = train(cfg)
    assert "target layer: features (the default for gainx.models.small_cnn:SmallCNN" in capsys.readouterr().err
    model, meta = load_model(path, model=SMALL)
    assert meta["target_layer"] == "features" and meta["model_kwargs"] == {"width": 4}
    assert model.fc.in_features == 16
