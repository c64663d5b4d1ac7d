"""Checkpoints cannot run code: a model spec that is not stock is refused before its module is imported.

Each hostile checkpoint is a real small_cnn checkpoint whose ``arch`` (and ``model_kwargs``) is replaced by a
spec that would create a marker file if anything ran: ``os:system``, attribute chains through other modules,
``runpy:run_path``, ``subprocess:run``, builtins, and a module in the working directory that touches the
marker when imported and when called. Every entry point that reads checkpoints is tried, and the marker must
not exist afterwards. Stock specs (built-in names, ``torchvision.models`` builders, ``timm:<name>``) still
load without flags; other specs load when the caller names them or trusts the file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import checkpoint_state  # tests/ is on sys.path under pytest
from PIL import Image
from torch import nn

from gainx.cli import main
from gainx.explain import explain_files
from gainx.models import SmallCNN, build_model, load_checkpoint, load_model
from gainx.training import TrainConfig, save_checkpoint
from gainx.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
EVIL = """
import pathlib
pathlib.Path({marker!r}).touch()  # at import


def factory(num_classes=3):
    pathlib.Path({marker!r}).touch()
"""
USER_NET = """
from torchvision.models import resnet18  # defined elsewhere: not a factory of this module
from os import system  # a builtin reached through this module

from gainx.models import SmallCNN


def build(num_classes=3, width=4):
    return SmallCNN(num_classes, width=width)
"""
HOW = r"--trust-model-code"


def _state(arch: str, model: nn.Module | None = None, **extra) -> dict:
    """A gainx checkpoint of ``model`` (a small SmallCNN by default) recording ``arch``."""
    model = model if model is not None else SmallCNN(3, width=4)
    return checkpoint_state(model, arch, std=0.25, **extra)


def _write(path: Path, arch: str, model_kwargs: dict | None = None, model: nn.Module | None = None) -> Path:
    save_checkpoint(path, _state(arch, model, model_kwargs=model_kwargs or {}))
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


@pytest.fixture
def in_cwd(tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``tmp_path`` as working directory and first on sys.path, holding ``evil_mod.py`` and ``user_net.py``."""
    (tmp_path / "evil_mod.py").write_text(EVIL.format(marker=str(marker)))
    (tmp_path / "user_net.py").write_text(USER_NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("evil_mod", "user_net"):
        sys.modules.pop(name, None)


# spec -> keyword arguments that would create MARKER if the spec were called (SCRIPT creates it when run)
HOSTILE = {
    "os:system": {"command": "touch MARKER"},
    "os.path:os.system": {"command": "touch MARKER"},
    "posixpath:os.system": {"command": "touch MARKER"},
    "runpy:run_path": {"path_name": "SCRIPT"},
    "subprocess:run": {"args": ["touch", "MARKER"]},
    "builtins:exec": {},
    "builtins:eval": {},
    "evil_mod:factory": {},
}


def _hostile_checkpoint(tmp_path: Path, marker: Path, spec: str) -> Path:
    script = tmp_path / "script.py"
    script.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    text = json.dumps(HOSTILE[spec]).replace("MARKER", str(marker)).replace("SCRIPT", str(script))
    return _write(tmp_path / "hostile.pt", spec, json.loads(text))


def _refused(message: str, spec: str) -> bool:
    return repr(spec) in message and HOW in message and f"--model {spec}" in message


@pytest.mark.parametrize("spec", list(HOSTILE))
def test_load_model_refuses_a_hostile_spec_before_importing_it(tmp_path, marker, in_cwd, spec) -> None:
    path = _hostile_checkpoint(tmp_path, marker, spec)
    with pytest.raises(ValueError) as info:
        load_model(path)
    assert not marker.exists() and "evil_mod" not in sys.modules
    assert _refused(str(info.value), spec) and str(path) in str(info.value), info.value


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("os:system", "'system' is a builtin_function_or_method, not a class or function"),
        ("os.path:os.system", "expected 'package.module:factory'"),
        ("posixpath:os.system", "expected 'package.module:factory'"),
        ("builtins:exec", "'exec' is a builtin_function_or_method"),
        ("builtins:eval", "'eval' is a builtin_function_or_method"),
        ("user_net:system", "'system' is a builtin_function_or_method"),
        ("user_net:resnet18", "'resnet18' is defined in 'torchvision.models.resnet', not in 'user_net'"),
        ("subprocess:Popen", "'Popen' is a class that is not a torch.nn.Module"),
        ("torchvision.models._api:get_model", "has no model builder 'get_model'"),
    ],
)
def test_trust_still_calls_only_classes_and_functions_of_the_named_module(
    tmp_path, marker, in_cwd, spec, message
) -> None:
    path = _write(tmp_path / "c.pt", spec, {"command": f"touch {marker}"} if "system" in spec else {})
    with pytest.raises(ValueError, match=message):
        load_model(path, trust_model_code=True)
    with pytest.raises(ValueError, match=message):
        load_model(path, model=spec)
    assert not marker.exists()


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "img.png"
    Image.new("RGB", (16, 16), (120, 30, 200)).save(path)
    return path


def _entry_points(tmp_path: Path, decoy_dir: Path) -> dict[str, list[str]]:
    out = str(tmp_path / "out")
    return {
        "eval": ["eval", "--data", str(decoy_dir), "--no-localization"],
        "attention": ["attention", str(_image(tmp_path)), "--out", out],
        "export": ["export", "--out", str(tmp_path / "m.onnx"), "--no-verify"],
        "cues": ["cues", "--data", str(decoy_dir), "--split", "test_random", "--out", out],
    }


EXPORT_MODULES = ("onnx", "onnxscript", "onnxruntime")  # what the export extra installs


def _skip_without_export() -> None:
    for module in EXPORT_MODULES:
        pytest.importorskip(module)


def _needs_export(command: str) -> None:
    if command == "export":
        _skip_without_export()


@pytest.mark.parametrize("spec", ["os:system", "os.path:os.system", "runpy:run_path", "evil_mod:factory"])
@pytest.mark.parametrize("command", ["eval", "attention", "export", "cues"])
def test_commands_refuse_a_hostile_checkpoint(tmp_path, marker, in_cwd, decoy_dir, capsys, command, spec) -> None:
    _needs_export(command)
    path = _hostile_checkpoint(tmp_path, marker, spec)
    argv = _entry_points(tmp_path, decoy_dir)[command]
    assert main([*argv, "--checkpoint", str(path)]) == 2
    assert not marker.exists() and "evil_mod" not in sys.modules
    err = capsys.readouterr().err
    assert _refused(err, spec) and f"gainx {command}: error: {path}" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("command", ["eval", "attention", "export", "cues"])
def test_commands_with_trust_still_refuse_chains_and_builtins(tmp_path, marker, decoy_dir, capsys, command) -> None:
    _needs_export(command)
    path = _write(tmp_path / "c.pt", "os.path:os.system", {"command": f"touch {marker}"})
    argv = _entry_points(tmp_path, decoy_dir)[command]
    assert main([*argv, "--checkpoint", str(path), "--trust-model-code"]) == 2
    assert "model 'os.path:os.system': expected 'package.module:factory'" in capsys.readouterr().err
    assert not marker.exists()


def test_command_in_a_real_process_does_not_import_the_working_directory(tmp_path, marker, decoy_dir) -> None:
    """``python -m gainx`` puts the working directory first on sys.path, where evil_mod.py waits."""
    (tmp_path / "evil_mod.py").write_text(EVIL.format(marker=str(marker)))
    path = _write(tmp_path / "hostile.pt", "evil_mod:factory")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "gainx", "eval", "--checkpoint", str(path), "--data", str(decoy_dir)]
    run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2 and _refused(run.stderr, "evil_mod:factory"), run.stderr
    assert not marker.exists()


def test_library_entry_points_refuse_a_hostile_checkpoint(tmp_path, marker, in_cwd, decoy_dir) -> None:
    from gainx.experiments.cues import write_cues

    path = _hostile_checkpoint(tmp_path, marker, "evil_mod:factory")
    calls = [
        lambda: explain_files(path, [_image(tmp_path)], tmp_path / "out"),
        lambda: write_cues(path, decoy_dir, "test_random", tmp_path / "out"),
    ]
    if all(_importable(m) for m in EXPORT_MODULES):
        from gainx.export import export_onnx

        calls.append(lambda: export_onnx(path, tmp_path / "m.onnx", verify=False))
    for call in calls:
        with pytest.raises(ValueError) as info:
            call()
        assert _refused(str(info.value), "evil_mod:factory"), info.value
    assert not marker.exists() and "evil_mod" not in sys.modules


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize(
    "spec",
    [
        "small_cnn",
        "torchvision.models:squeezenet1_1",
        "torchvision.models.mobilenetv3:mobilenet_v3_small",
        "torchvision.models:regnet_x_400mf",  # cannot be built on the meta device: loads without the size check
    ],
)
def test_stock_checkpoints_load_without_flags(tmp_path, spec) -> None:
    model = build_model(spec, 3).eval()
    loaded, meta = load_model(_write(tmp_path / "stock.pt", spec, model=model))
    assert meta["arch"] == spec and type(loaded) is type(model)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_timm_checkpoint_loads_without_flags(tmp_path) -> None:
    pytest.importorskip("timm")
    model = build_model("timm:resnet10t", 3).eval()
    loaded, _ = load_model(_write(tmp_path / "timm.pt", "timm:resnet10t", model=model))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        *[
            ({"num_classes": n}, f"'num_classes' must be a positive int, got {n!r}")
            for n in ["3", 0, -1, 2.5, True, None]
        ],
        ({"num_classes": 1000}, "'classes' must be a list of 1000 names ('num_classes'), got 3 names"),
        ({"classes": "abc"}, "'classes' must be a list of 3 names ('num_classes'), got a str"),
    ],
)
def test_num_classes_that_is_not_the_number_of_class_names_is_named(tmp_path, entries, message) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {**_state("small_cnn", SmallCNN(3)), **entries})
    with pytest.raises(ValueError, match=f"^{re.escape(f'{path}: {message}')}$"):
        load_model(path)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (torch.zeros(3), "entry 'model': expected a state dict (names -> tensors), got Tensor"),
        ([torch.zeros(3)], "entry 'model': expected a state dict (names -> tensors), got list"),
        ("weights", "entry 'model': expected a state dict (names -> tensors), got str"),
        (
            {"w": torch.zeros(3), "b": "x"},
            "entry 'model': not a state dict of tensors; entries ['b'] hold other values",
        ),
    ],
    ids=["tensor", "list", "str", "not-tensors"],
)
def test_model_entry_that_is_not_a_state_dict_is_named(tmp_path, capsys, weights, message) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {**_state("small_cnn"), "model": weights})
    with pytest.raises(ValueError, match=f"^{re.escape(f'{path}, {message}')}$"):
        load_checkpoint(path)
    assert main(["attention", str(_image(tmp_path)), "--out", str(tmp_path / "out"), "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"gainx attention: error: {path}, {message}" in err and "internal error" not in err, err


@pytest.mark.parametrize(
    ("spec", "kwargs", "model", "message"),
    [
        (  # pos_embedding of (100000 / 16)^2 + 1 tokens x 768: 120 GB
            "torchvision.models:vit_b_16",
            {"image_size": 100_000},
            None,
            r"with 3 classes the model would hold 30,[\d,]+ weights, the file holds [\d,]+; refused before building it",
        ),
        (
            "torchvision.models:squeezenet1_1",
            {"num_classes": 10**6},
            "squeezenet1_1",
            r"classifier\.1\.weight has shape \[3, 512, 1, 1\] in the file and \[1000000, 512, 1, 1\] in the model",
        ),
    ],
)
def test_a_model_larger_than_the_file_is_refused_before_it_is_built(
    tmp_path, monkeypatch, spec, kwargs, model, message
):
    """Keyword arguments from the file size the model's tensors: it is built on the meta device and compared with
    the file's weights first (the real build, here replaced by a tripwire, never happens)."""
    import gainx.models.checkpoint as checkpoint

    net = build_model(f"torchvision.models:{model}", 3) if model else None
    path = _write(tmp_path / "big.pt", spec, kwargs, model=net)

    def tripwire(*args, **kwargs):
        raise AssertionError("the model was built for real")

    monkeypatch.setattr(checkpoint, "build_model", tripwire)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: the weights do not fit {spec!r} .*: {message}"):
        load_model(path)


def test_stock_spec_asking_for_downloads_or_files_needs_trust(tmp_path) -> None:
    spec = "torchvision.models:squeezenet1_1"
    path = _write(tmp_path / "c.pt", spec, {"weights": "DEFAULT"}, model=build_model(spec, 3))
    with pytest.raises(ValueError, match=r"keyword arguments \['weights'\] .* would read files or download"):
        load_model(path)
    with pytest.raises(ValueError, match=r"keyword arguments \['weights'\]"):
        load_model(path, model=spec)


def test_a_user_module_loads_when_named_or_trusted(tmp_path, in_cwd, capsys) -> None:
    model = SmallCNN(3, width=4).eval()
    path = _write(tmp_path / "user.pt", "user_net:build", {"width": 4}, model=model)
    with pytest.raises(ValueError, match="its model 'user_net:build' is not a built-in name"):
        load_model(path)
    assert "user_net" not in sys.modules
    with pytest.raises(ValueError, match="holds a 'user_net:build' model, not the 'user_net:other' model given"):
        load_model(path, model="user_net:other")
    x = torch.rand(2, 3, 16, 16)
    for how in ({"model": "user_net:build"}, {"trust_model_code": True}, {"model": SmallCNN(3, width=4)}):
        loaded, meta = load_model(path, **how)
        assert meta["arch"] == "user_net:build" and not loaded.training
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))
    out = tmp_path / "overlays"
    argv = ["attention", str(_image(tmp_path)), "--checkpoint", str(path), "--out", str(out)]
    assert main(argv) == 2 and "--model user_net:build" in capsys.readouterr().err
    assert main([*argv, "--model", "user_net:build"]) == 0
    assert len(list(out.glob("*.png"))) == 1


def test_training_with_a_typed_spec_still_works(decoy_dir, tmp_path, in_cwd) -> None:
    """``gainx train --model pkg.mod:factory``: the user typed the spec; the checkpoint then needs it again."""
    cfg = TrainConfig(
        data=str(decoy_dir), out=str(tmp_path / "run"), arch="user_net:build", method="baseline", epochs=1
    )
    cfg.progress = False
    path = train(cfg)
    with pytest.raises(ValueError, match="user_net:build"):
        load_model(path)
    assert load_model(path, model="user_net:build")[1]["num_classes"] == 10


def _diverged_copy(path: Path) -> str:
    state = torch.load(path, weights_only=True)
    state["model"]["fc.bias"] = torch.full_like(state["model"]["fc.bias"], float("inf"))
    save_checkpoint(path, state)
    return "fc.bias"


def test_resume_refuses_a_last_checkpoint_holding_non_finite_weights(decoy_dir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(decoy_dir), "--out", str(out), "--arch", "small_cnn", "--method", "baseline"]
    argv += ["--batch-size", "32", "--no-progress", "--no-augment", "--val-split", "none"]
    assert main([*argv, "--epochs", "1"]) == 0
    bad = _diverged_copy(out / "last.pt")
    rows = (out / "metrics.csv").read_text()
    assert main([*argv, "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'last.pt'}: 1 weight tensor(s) hold NaN or infinite values (first: {bad})" in err, err
    assert "cannot resume from it" in err and "last finite checkpoint" not in err
    assert (out / "metrics.csv").read_text() == rows  # nothing was trained


def test_stop_message_names_the_epoch_whose_weights_last_pt_keeps(decoy_dir, tmp_path, capsys) -> None:
    """L_am weighted by 1e39 is infinite from the first attention-mining step (epoch 2)."""
    out = tmp_path / "run"
    argv = ["train", "--data", str(decoy_dir), "--out", str(out), "--arch", "small_cnn", "--method", "gain"]
    argv += ["--alpha", "1e39", "--am-warmup", "1", "--epochs", "2", "--batch-size", "32", "--no-progress"]
    assert main([*argv, "--val-split", "none"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'last.pt'} keeps the finite weights of epoch 1" in err, err


def test_export_takes_the_checkpoint_spec_with_model(tmp_path, in_cwd, capsys, monkeypatch) -> None:
    """``gainx export --checkpoint FILE --model SPEC``: the spec must be the checkpoint's, and reaches the exporter
    (the export itself is replaced by a recorder: tests/test_export_cli.py exports for real)."""
    _skip_without_export()
    import gainx.export.onnx_export as onnx_export

    path = _write(tmp_path / "user.pt", "user_net:build", {"width": 4}, model=SmallCNN(3, width=4))
    argv = ["export", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx"), "--no-verify"]
    assert main([*argv, "--model", "user_net:other"]) == 2
    assert "holds a 'user_net:build' model, not the 'user_net:other' model given" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr(onnx_export, "export_onnx", lambda source, out, **kwargs: calls.append(kwargs) or out)
    assert main([*argv, "--model", "user_net:build"]) == 0
    assert calls[0]["model_spec"] == "user_net:build" and calls[0]["trust_model_code"] is False
