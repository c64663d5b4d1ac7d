"""Dependency floors in pyproject.toml that safety depends on."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _torch_requirements() -> list[Requirement]:
    data = tomllib.loads(PYPROJECT.read_text())
    found = [Requirement(r) for r in (*data["project"]["dependencies"], *data["build-system"]["requires"])]
    return [r for r in found if r.name == "torch"]


@pytest.mark.parametrize("version,allowed", [("2.4.1", False), ("2.5.1", False), ("2.9.1", False), ("2.10.0", True)])
def test_torch_floor_excludes_weights_only_bypasses(version: str, allowed: bool) -> None:
    """Checkpoint safety rests on torch.load(weights_only=True), bypassable before 2.6 and 2.10 (see pyproject)."""
    requirements = _torch_requirements()
    assert len(requirements) == 2  # the runtime dependency and the build requirement
    assert all(r.specifier.contains(version) == allowed for r in requirements), [str(r) for r in requirements]
