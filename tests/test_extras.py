"""Optional dependencies: the core installs without them, and a command that needs one names its extra."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gainx._extras import MissingExtraError, require
from gainx.data.synthetic import write_decoy

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("onnx", "onnxscript", "onnxruntime", "starlette", "uvicorn", "multipart", "tensorboard", "triton")
OPTIONAL += ("prometheus_client", "pycocotools", "lightning", "pytorch_lightning")


def _project() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in requirements}


def test_core_dependencies_leave_out_the_optional_parts() -> None:
    project = _project()
    core = _names(project["dependencies"])
    assert not core & {"onnx", "onnxscript", "onnxruntime", "starlette", "uvicorn", "python-multipart"}
    assert not core & {"tensorboard", "triton", "pybind11", "pycocotools", "lightning", "prometheus-client"}
    extras = project["optional-dependencies"]
    assert {"onnx", "onnxruntime"} <= _names(extras["export"])
    assert {"starlette", "uvicorn", "python-multipart", "onnxruntime"} <= _names(extras["serve"])
    everything = extras["all"][0]
    for extra in ("export", "serve", "tensorboard", "triton", "coco", "lightning"):
        assert extra in everything, extra
    assert "gainx[all]" in extras["test"]


def test_require_names_the_extra() -> None:
    assert require("json", extra="none").dumps([]) == "[]"
    with pytest.raises(
        MissingExtraError, match=r"ONNX export needs 'no_such_module_x'.*pip install \"gainx\[export\]\""
    ):
        require("no_such_module_x", extra="export", feature="ONNX export")
    with pytest.raises(RuntimeError, match=r"gainx\[serve\]"):  # the command line reports RuntimeErrors in one line
        require("no_such_module_x.sub", extra="serve")


def test_require_shows_a_broken_dependency_of_an_installed_module(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "half_installed_pkg.py").write_text("import no_such_dependency_y\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_y") as info:
        require("half_installed_pkg", extra="export")
    assert not isinstance(info.value, MissingExtraError)


def test_lightning_integration_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "gainx.integrations.lightning", raising=False)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    with pytest.raises(MissingExtraError, match=r"Lightning integration needs 'lightning'.*gainx\[lightning\]"):
        importlib.import_module("gainx.integrations.lightning")


BLOCKER = textwrap.dedent(
    """
    import json, sys
    for name in sys.argv[1].split(","):
        sys.modules[name] = None  # import fails as if not installed; importlib.util.find_spec returns None
    from gainx.cli import main
    for argv in json.loads(sys.argv[2]):
        print(f"=== {argv[0]}", file=sys.stderr, flush=True)
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        print(f"=== exit {code}", file=sys.stderr, flush=True)
    """
)


def _gainx_without_extras(tmp_path: Path, *commands: list[str]) -> dict[str, tuple[int, str]]:
    """Run ``gainx`` commands in one child process where every optional dependency fails to import;
    command name -> (exit code, its stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, ",".join(OPTIONAL), json.dumps(commands)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    results = {}
    for block in proc.stderr.split("=== ")[1:]:
        if not block.startswith("exit "):
            name, _, err = block.partition("\n")
        else:
            code = block.split()[1]
            results[name] = (int(code) if code.lstrip("-").isdigit() else 1, err)
    assert len(results) == len(commands), proc.stderr
    return results


def test_training_runs_on_the_core_alone_and_extras_are_named(tmp_path: Path) -> None:
    write_decoy(tmp_path / "d", image_size=32, train_size=64, test_size=16)
    results = _gainx_without_extras(
        tmp_path,
        ["train", "--data", "d", "--arch", "small_cnn", "--method", "gainext", "--epochs", "1", "--out", "run",
         "--val-split", "test_random", "--no-progress"],
        ["export", "--checkpoint", "run/last.pt", "--out", "m.onnx"],
        ["serve", "m.onnx", "--port", "0"],
    )  # fmt: skip
    code, err = results["train"]
    assert code == 0, err
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "metrics.csv").is_file()
    assert 'pip install "gainx[tensorboard]"' in err and not (tmp_path / "run" / "tensorboard").exists()
    code, err = results["export"]
    assert code == 2 and 'pip install "gainx[export]"' in err and "Traceback" not in err, err
    assert not (tmp_path / "m.onnx").exists()
    code, err = results["serve"]
    assert code != 0 and 'pip install "gainx[serve]"' in err, err
