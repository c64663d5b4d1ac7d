"""The package's layering: every import of another gainx package points down.

training -> losses -> attention -> ops; serve -> export / runtime -> models -> ops;
data, io, viz, _extras (optional dependencies) and _lazy sit at the bottom beside ops; cli_errors
(how the command line reports errors) serves the entry points.
Imports inside functions count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gainx

PACKAGE = Path(gainx.__file__).resolve().parent

# What each top-level part of gainx may import from the others ("gainx" alone: the package root,
# for __version__ and the compiled extension gainx._C).
ALLOWED: dict[str, set[str]] = {
    "_extras": set(),
    "_lazy": set(),
    "ops": {"gainx", "_extras"},
    "io": set(),
    "data": {"io", "_extras", "_lazy"},
    "viz": {"io"},
    "models": {"io", "_extras"},
    "attention": {"ops", "_extras"},
    "losses": {"attention", "ops", "data"},
    "evaluation": {"attention", "ops", "data"},
    "runtime": {"data", "_extras"},
    "training": {"losses", "attention", "ops", "models", "data", "evaluation", "io", "_extras"},
    "explain": {"attention", "ops", "models", "data", "viz", "io"},
    "export": {"gainx", "attention", "ops", "models", "runtime", "data", "io", "_extras"},
    "serve": {"gainx", "runtime", "data", "viz", "io", "ops", "_extras", "_lazy"},
    "integrations": {"losses", "attention", "ops", "models", "data", "_extras"},
    "experiments": {
        "attention",
        "ops",
        "models",
        "data",
        "losses",
        "training",
        "evaluation",
        "explain",
        "viz",
        "io",
    },
    "demo": {"data", "models", "losses", "training", "evaluation", "explain", "io"},
    "cli_errors": {"_extras"},
}
TOP = {"__init__", "__main__", "cli"}  # entry points: may import anything


def imported_parts(path: Path) -> set[str]:
    """Top-level gainx parts imported anywhere in ``path`` (``"gainx"`` for the package root)."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name == "gainx":
                parts.add("gainx")
            elif name.startswith("gainx."):
                parts.add(name.split(".")[1])
    return parts


def part_of(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def test_every_import_points_down() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = part_of(path)
        if part in TOP:
            continue
        assert part in ALLOWED, f"{path.relative_to(PACKAGE)} is in a part the layering does not know: {part}"
        for used in imported_parts(path) - {part} - ALLOWED[part]:
            wrong.append(f"{path.relative_to(PACKAGE)} imports gainx.{used}")
    assert not wrong, "imports that run up the layers:\n" + "\n".join(wrong)


def test_layer_rule_catches_an_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from gainx.training import TrainConfig\n")
    assert "training" in imported_parts(source) - ALLOWED["ops"]


@pytest.mark.parametrize("module", ["gainx.ops", "gainx.attention", "gainx.models"])
def test_lower_layers_import_nothing_above_them(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "print(' '.join(sorted({m.split('.')[1] for m in sys.modules if m.startswith('gainx.')})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    loaded = set(out.stdout.split())
    part = module.split(".")[1]
    root = {"_C", "_lazy"}  # what the package root and the extension load
    assert loaded - {part} <= ALLOWED[part] | root, f"importing {module} loaded {sorted(loaded)}"


def test_public_names_keep_their_paths() -> None:
    from gainx.export import export_onnx
    from gainx.runtime import AttentionSession

    assert callable(gainx.attention_maps) and callable(gainx.GAIN) and gainx.GAINOutput is not None
    assert callable(export_onnx) and callable(AttentionSession)
    assert {"GAIN", "attention_maps"} <= set(dir(gainx))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gainx.nope  # noqa: B018
